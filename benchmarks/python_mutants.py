"""The Python mutants: single planted bugs in carafe_cupy/, each a regular expression
matched against one module and its replacement. Run them with
``python benchmarks/mutate_python.py``.

They cover the layers above the kernels: the planner's decisions and the tensors
they read, the launch hand-over (device, stream, arguments), argument checks,
dtypes and layouts of results in every front end, the pure-PyTorch path and the
modules' own checks. Each stands for a class of bug; add one with every new class,
and a test until it is killed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from python_mutants_host import HOST_MUTANTS  # beside this file


@dataclass(frozen=True)
class PythonMutant:
    name: str
    file: str  # under carafe_cupy/
    pattern: str
    replacement: str
    occurrence: int = 0  # which match to change

    def plant(self, root: Path) -> tuple[Path, str, str]:
        """(file, its text, its text with the mutant planted); ``root`` holds carafe_cupy/."""
        path = root / "carafe_cupy" / self.file
        text = path.read_text()
        matches = list(re.finditer(self.pattern, text))
        if self.occurrence >= len(matches):
            raise LookupError(
                f"{self.name}: pattern {self.pattern!r} matches {len(matches)} times in "
                f"{self.file}; occurrence {self.occurrence} wanted"
            )
        match = matches[self.occurrence]
        mutated = text[: match.start()] + match.expand(self.replacement) + text[match.end() :]
        return path, text, mutated


M = PythonMutant
TILES, PLANNER, TYPES = "_plan/tiles.py", "_plan/planner.py", "_plan/types.py"
LAUNCH, REFS, API = "_runtime/launch.py", "_array/refs.py", "_array/api.py"
COMMON, FUNCTIONAL, FUSED, OPS = (
    "_torch/common.py",
    "_torch/functional.py",
    "_torch/fused.py",
    "_torch/ops.py",
)
VALIDATE, CPU = "_core/validate.py", "_cpu/path.py"
EXPORT = "_torch/export.py"

MUTANTS = (
    # ---- the planner: which tensors a decision reads, what each argument is
    M(
        "pairs-ignore-row-stride",
        TILES,
        r"for stride in strides\[:3\]",
        r"for stride in strides[:2]",
    ),
    M("pairs-one-element-alignment", TILES, r"alignment = 2 \* ITEMSIZE", r"alignment = ITEMSIZE"),
    M("pairs-ignore-x-stride", TILES, r"strides\[3\] == 1\n", r"strides[3] != 0\n"),
    M("pairs-any-scale", TILES, r"geometry\.scale_factor % 2", r"geometry.scale_factor % 1"),
    M("forward-pairs-read-features", PLANNER, r"layout\[1:\]\)", r"layout[:2])"),
    M(
        "grad-masks-pairs-read-masks",
        PLANNER,
        r"\(layout\[0\], layout\[4\]\)",
        r"(layout[0], layout[2])",
    ),
    M("fused-pairs-read-logits", PLANNER, r"layout\[2:\]\)", r"layout[1:2])"),
    M(
        "general-grad-features-reads-features",
        PLANNER,
        r"\(0, 2, 3\), geometry",
        r"(0, 1, 3), geometry",
    ),
    M(
        "tiled-grad-masks-reads-masks",
        PLANNER,
        r"slots = \(0, 1, None, 4\)",
        r"slots = (0, 2, None, 4)",
    ),
    M(
        "auto-prefers-one-pixel",
        PLANNER,
        r'plans\.get\("tiled_pair"\) or plans\.get\("tiled"\)',
        r'plans.get("tiled") or plans.get("tiled_pair")',
    ),
    M(
        "nested-variant-resets-to-auto",
        TYPES,
        r"_variant_override = previous",
        r"_variant_override = None",
    ),
    M(
        "environment-beats-forced-variant",
        TYPES,
        r"return _variant_override or _variant_variable\(\)",
        r"return _variant_variable() if _env.text('CARAFE_CUPY_KERNEL_VARIANT') else "
        r"_variant_override or _variant_variable()",
    ),
    # ---- the launch hand-over
    M(
        "run-drops-device",
        LAUNCH,
        r"planned\.shared_mem,\n(\s+)device,",
        r"planned.shared_mem,\n\g<1>0,",
    ),
    M(
        "run-drops-stream",
        LAUNCH,
        r"device,\n( +)stream,\n( +)planned\.module",
        r"device,\n\g<1>0,\n\g<2>planned.module",
    ),
    M(
        "runtime-device-stream-swapped",
        LAUNCH,
        r"args, shared_mem, device, stream\)",
        r"args, shared_mem, stream, device)",
    ),
    M(
        "forward-default-stream",
        LAUNCH,
        r"(plan_forward\(geometry, \*tensors, plan_target\(device\)\)), geometry, tensors, "
        r"device, stream\)",
        r"\1, geometry, tensors, device, 0)",
    ),
    M(
        "fused-backward-device-0",
        LAUNCH,
        r"_run\(launches, geometry, tensors, device, stream\)",
        r"_run(launches, geometry, tensors, 0, stream)",
    ),
    M(
        "launch-arguments-skip-null-slot",
        LAUNCH,
        r"_NO_TENSOR if index is None else tensors\[index\]",
        r"tensors[index or 0]",
    ),
    M("torch-stream-of-current-device", COMMON, r"current_stream\(device\)", r"current_stream()"),
    M("torch-device-0", COMMON, r"return device\.index, torch", r"return 0, torch"),
    # ---- the array front end
    M(
        "array-stream-of-current-device",
        REFS,
        r"with cupy\.cuda\.Device\(array\.device\.id\):\n\s+return cupy\.cuda\.get_current_stream",
        r"return cupy.cuda.get_current_stream",
    ),
    M(
        "array-device-0",
        REFS,
        r"return 0 if isinstance\(array, np\.ndarray\) else array\.device\.id",
        r"return 0",
    ),
    M(
        "array-output-on-current-device",
        REFS,
        r"with cupy\.cuda\.Device\(like\.device\.id\):\n\s+return cupy\.empty",
        r"return cupy.empty",
    ),
    M(
        "array-promote-on-current-device",
        API,
        r"with _dlpack\.on_device\(arrays\[0\]\):\n\s+return tuple",
        r"return tuple",
    ),
    M(
        "array-one-device-check-off",
        API,
        r"len\(set\(devices\.values\(\)\)\) > 1",
        r"len(set(devices.values())) > 2",
    ),
    M(
        "array-absolute-strides",
        REFS,
        r"tuple\(stride // itemsize",
        r"tuple(abs(stride) // itemsize",
    ),
    M(
        "array-grad-features-promoted-dtype",
        API,
        r"grad_features\.astype\(feature_dtype",
        r"grad_features.astype(features.dtype",
    ),
    M(
        "array-grad-kernels-promoted-dtype",
        API,
        r"grad_kernels\.astype\(kernel_dtype",
        r"grad_kernels.astype(kernels.dtype",
    ),
    M(
        "array-grad-output-unchecked",
        API,
        r"_validate\.check_grad_output_shape\(grad_output\.shape, geometry, where\)",
        r"pass",
    ),
    # ---- torch dtypes and layouts
    M(
        "torch-grad-features-promoted-dtype",
        FUNCTIONAL,
        r"grad_features\.to\(features\.dtype\),",
        r"grad_features,",
    ),
    M(
        "torch-grad-kernels-promoted-dtype",
        FUNCTIONAL,
        r"grad_kernels\.to\(kernels\.dtype\)",
        r"grad_kernels",
    ),
    M(
        "torch-forward-unpromoted",
        FUNCTIONAL,
        r"dtype = torch\.promote_types\(features\.dtype, kernels\.dtype\)",
        r"dtype = features.dtype",
    ),
    M(
        "function-grad-masks-promoted-dtype",
        "mmcv_compat.py",
        r"grad_masks\.to\(masks\.dtype\)",
        r"grad_masks",
    ),
    M(
        "function-grad-features-promoted-dtype",
        "mmcv_compat.py",
        r"grad_features\.to\(features\.dtype\), grad_masks",
        r"grad_features, grad_masks",
    ),
    M(
        "from-logits-unpromoted",
        FUSED,
        r"dtype = torch\.promote_types\(features\.dtype, logits\.dtype\)",
        r"dtype = features.dtype",
    ),
    M(
        "fused-grad-logits-accumulator-dtype",
        FUSED,
        r"scale_factor\n    \)\.to\(logits\.dtype\)",
        r"scale_factor\n    )",
    ),
    M(
        "fused-grad-output-unchecked",
        FUSED,
        r"_validate\.check_grad_output_shape\(grad_output\.shape, geometry\)",
        r"pass",
    ),
    M(
        "backward-op-grad-output-unchecked",
        OPS,
        r"_validate\.check_grad_output_shape\(grad_output\.shape, geometry\)",
        r"pass",
    ),
    M("ambiguous-layout-channels-last", CPU, r" and not features\.is_contiguous\(\)", r""),
    M(
        "cpu-gradients-not-like-inputs",
        CPU,
        r"_like\(grad_features_cl\.permute\(0, 3, 1, 2\), features\)",
        r"grad_features_cl.permute(0, 3, 1, 2)",
    ),
    M(
        "cpu-fp16-accumulates-in-fp16",
        CPU,
        r"if dtype == torch\.float64 else torch\.float32",
        r"if dtype == torch.float64 else dtype",
    ),
    M(
        "cpu-tap-range-rounding",
        CPU,
        r"max\(0, -\(offset // stride\)\)",
        r"max(0, -offset // stride)",
    ),
    # ---- argument checks
    M("zero-channels-accepted", VALIDATE, r"if channels < 1:", r"if channels < 0:"),
    M(
        "grad-output-width-unchecked",
        VALIDATE,
        r"tuple\(int\(size\) for size in grad_output_shape\) != expected",
        r"tuple(int(size) for size in grad_output_shape)[:3] != expected[:3]",
    ),
    M(
        "grad-output-batch-unchecked",
        VALIDATE,
        r"tuple\(int\(size\) for size in grad_output_shape\) != expected",
        r"tuple(int(size) for size in grad_output_shape)[1:] != expected[1:]",
    ),
    M(
        "masks-width-unchecked",
        VALIDATE,
        r"tuple\(int\(size\) for size in masks_shape\) != expected",
        r"tuple(int(size) for size in masks_shape)[:3] != expected[:3]",
    ),
    M("zero-width-accepted", VALIDATE, r"if height < 1 or width < 1:", r"if height < 1:"),
    M(
        "group-need-not-divide",
        VALIDATE,
        r"if channels % group_size:",
        r"if group_size > channels:",
    ),
    M(
        "scale-and-stride-together",
        VALIDATE,
        r"scale_factor > 1 and stride > 1",
        r"scale_factor > 1 and stride > 2",
    ),
    M("index-range-doubled", VALIDATE, r"if count > INDEX_MAX:", r"if count > 2 * INDEX_MAX:"),
    M(
        "bools-taken-as-ints",
        VALIDATE,
        r'isinstance\(value, bool\) or not hasattr\(value, "__index__"\)',
        r'not hasattr(value, "__index__")',
    ),
    M("even-kernel-size-accepted", VALIDATE, r"if value % 2 == 0:", r"if value % 2 == 2:"),
    # ---- the modules' own checks
    M(
        "carafepack-group-check-reads-kernel",
        "nn.py",
        r"if channels % self\.up_group:",
        r"if channels % self.up_kernel:",
    ),
    M(
        "carafepack-group-check-reads-scale",
        "nn.py",
        r"if channels % self\.up_group:",
        r"if channels % self.scale_factor:",
    ),
    M(
        "involution-ratio-equal-refused",
        "nn_reassembly.py",
        r"if reduction_ratio > channels:",
        r"if reduction_ratio >= channels:",
    ),
    M(
        "involution-ratio-unchecked",
        "nn_reassembly.py",
        r"if reduction_ratio > channels:",
        r"if reduction_ratio > 2 * channels:",
    ),
    # ---- the standard-op decomposition that ONNX exports
    M(
        "export-kernel-row-ignores-dilation",
        EXPORT,
        r"i \* d : i \* d \+ \(rows - 1\) \* t \+ 1 : t,",
        r"i : i + (rows - 1) * t + 1 : t,",
    ),
    M(
        "export-mask-rows-and-columns-swapped",
        EXPORT,
        r"\.permute\(2, 0, 4, 6, 1, 5, 7, 3\)",
        r".permute(3, 0, 4, 6, 1, 5, 7, 2)",
    ),
    # ---- grid fit: grad_features' kernel, tile and slices by a launch's modelled time
    M(
        "grid-fit-slower-features-kernel",
        "_plan/features_tiles.py",
        r"return one_pixel if faster else quad",
        r"return quad if faster else one_pixel",
    ),
    M(
        "grid-fit-l2-ignored",
        "_plan/grid_fit.py",
        r"return max\(busiest_sm_cycles\(cost, blocks, channels_per_block, target\), l2\)",
        r"return busiest_sm_cycles(cost, blocks, channels_per_block, target)",
    ),
    M(
        "grid-fit-partial-round-at-full-rate",
        "_plan/grid_fit.py",
        r"share = \(tail / cost\.resident\) \*\* PARTIAL_ROUND_EXPONENT",
        r"share = tail / cost.resident",
    ),
    M(
        "grid-fit-one-tile-shape",
        "_plan/features_tiles.py",
        r"for tile in FEATURES_TILES_S2\n",
        r"for tile in FEATURES_TILES_S2[:1]\n",
    ),
    M(
        "grid-fit-masks-read-once",
        "_plan/grid_fit.py",
        r"return LaunchBytes\(masks, once\)\n",
        r"return LaunchBytes(0, once)\n",
    ),
    M(
        "grid-fit-quad-masks-read-once",
        "_plan/grid_fit.py",
        r"return LaunchBytes\(masks, once, QUAD_SECTOR_OVERHEAD\)",
        r"return LaunchBytes(0, once, QUAD_SECTOR_OVERHEAD)",
    ),
    M(
        "downpack-group-check-off",
        "nn_reassembly.py",
        r'_check_divides\(where, "down_group", down_group, channels\)',
        r"pass",
    ),
) + tuple(M(*mutant) for mutant in HOST_MUTANTS)
