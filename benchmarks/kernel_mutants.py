"""The kernel mutants: single planted bugs, each a regular expression matched
against one source file in cuda_src/ and its replacement. Run them with
``python benchmarks/mutate_kernels.py``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kernel_mutants_barriers import BARRIERS
from kernel_mutants_forward_tiled import FORWARD_TILED
from kernel_mutants_grad_features_tiled import GRAD_FEATURES_TILED
from kernel_mutants_grad_masks_tiled import GRAD_MASKS_TILED
from kernel_mutants_numerics import NUMERICS
from kernel_mutants_strided import STRIDE_DILATION, STRIPS


@dataclass(frozen=True)
class Mutant:
    name: str
    files: tuple[str, ...]  # in cuda_src/, in the order the kernel source includes them
    pattern: str
    replacement: str
    occurrence: int = 0  # which match to change (counted across ``files``)

    def plant(self, source_dir: Path) -> tuple[Path, str, str]:
        """(file, its text, its text with the mutant planted)."""
        seen = 0
        for name in self.files:
            path = source_dir / name
            text = path.read_text()
            matches = list(re.finditer(self.pattern, text))
            if self.occurrence < seen + len(matches):
                match = matches[self.occurrence - seen]
                mutated = text[: match.start()] + match.expand(self.replacement)
                return path, text, mutated + text[match.end() :]
            seen += len(matches)
        raise LookupError(
            f"{self.name}: pattern {self.pattern!r} matches {seen} times in "
            f"{', '.join(self.files)}; occurrence {self.occurrence} wanted"
        )


# the tiled kernels: carafe_tiled.cuh (helpers, entry points) and the parts it includes
TILED = (
    "carafe_tiled.cuh",
    "carafe_tiled_forward.cuh",
    "carafe_tiled_grad_masks.cuh",
    "carafe_tiled_grad_features.cuh",
)
COMMON, GENERAL = ("carafe_common.cuh",), ("carafe.cu",)
OUT_OFFSET = r"p\.n \* os\.n \+ c_begin \* os\.c \+ y \* os\.h \+ x \* os\.w"

MUTANTS = (
    # index width
    Mutant(
        "tiled-output-offset-32-bit", TILED, rf"output \+ ({OUT_OFFSET})", r"output + (int)(\1)"
    ),
    Mutant(
        "tiled-grad-features-offset-32-bit",
        TILED,
        r"grad_features \+ (p\.n \* fs\.n \+ \(c0 \+ cc\) \* fs\.c \+ h \* fs\.h \+ w \* fs\.w)",
        r"grad_features + (int)(\1)",
    ),
    Mutant(
        "fused-logit-address-32-bit",
        TILED,
        r"return logits \+ (n \* st\.n \+ channel \* st\.c \+ h \* st\.h \+ w \* st\.w);",
        r"return logits + (int)(\1);",
    ),
    Mutant(
        "general-output-offset-32-bit",
        GENERAL,
        r"output \+ (strip\.n \* output_strides\.n \+\s+strip\.first_channel \* "
        r"output_strides\.c \+ y \* output_strides\.h \+\s+x \* output_strides\.w)",
        r"output + (int)(\1)",
    ),
    # shared-memory layout and synchronisation
    Mutant(
        # one short is exact for one pixel per thread at s = 1 (pairs keep a spare column)
        "halo-pitch-one-short",
        TILED,
        r"return \(CARAFE_TILE_THREADS_X \* PAIR - 1 \+ PAIR - 1\) / PAIR \+ K;",
        r"return (CARAFE_TILE_THREADS_X * PAIR - 1 + PAIR - 1) / PAIR + K - 1;",
    ),
    Mutant(
        "missing-barrier-before-restaging",
        TILED,
        r"__syncthreads\(\);  // previous batch fully read\n",
        "",
    ),
    Mutant(
        "grad-masks-missing-warp-barrier-before-restaging",
        TILED,
        r"__syncwarp\(\);  // the warp's previous batch fully read\n",
        "",
    ),
    Mutant(
        "grad-features-partial-sum-pitch",
        TILED,
        r"sub_pixel_row_total\(sums \+ a \* blockDim\.x, s\)",
        "sub_pixel_row_total(sums + a * s, s)",
    ),
    Mutant(
        "grad-features-halo-sub-pixel-transposed",
        TILED,
        r"at = \(\(r - centre_r \* s\) \* s \+ \(k - centre_k \* s\)\) \* sub_plane",
        "at = ((k - centre_k * s) * s + (r - centre_r * s)) * sub_plane",
    ),
    Mutant(
        "grad-features-halo-column-bound-off-by-one",
        TILED,
        r"loaded = staged && y >= 0 && y < out_height && x >= 0 && x < out_width;",
        "loaded = staged && y >= 0 && y < out_height && x >= 0 && x <= out_width;",
    ),
    Mutant(
        "grad-features-second-staging-pass-skipped",
        TILED,
        r"for \(int pass = 1; pass < passes; \+\+pass\)",
        "for (int pass = 1; pass < 1; ++pass)",
    ),
    Mutant(
        "grad-features-mask-row-step",
        TILED,
        r"row_step = K \* taps_apart - pixel_step \* ms\.h;",
        "row_step = K * taps_apart - ms.h;",
    ),
    Mutant(
        "grad-features-mask-column-step",
        TILED,
        r"col_step = taps_apart - pixel_step \* ms\.w;",
        "col_step = taps_apart - ms.w;",
    ),
    # tile and image edges
    Mutant(
        "forward-tile-edge-x",
        TILED,
        r"const bool inside = y < out_height && x < out_width;"
        r"(\n    constexpr int PITCH = tile_pitch<K, 1>)",
        r"const bool inside = y < out_height;\1",
    ),
    Mutant(
        "grad-masks-row-edge-x",
        TILED,
        r"const bool inside = x < out_width;\n",
        "const bool inside = true;\n",
    ),
    Mutant(
        "grad-features-tile-edge-x",
        TILED,
        r"if \(h < g\.height && w < g\.width\) \{",
        "if (h < g.height) {",
    ),
    Mutant(
        "halo-row-bound-off-by-one", TILED, r"row < height && col >= 0", "row <= height && col >= 0"
    ),
    Mutant(
        "general-column-bound-off-by-one",
        GENERAL,
        r"if \(feature_x < 0 \|\| feature_x >= g\.width\) continue;",
        "if (feature_x < 0 || feature_x > g.width) continue;",
    ),
    Mutant(
        "channel-slice-overrun",
        TILED,
        r"const index_t c_end = min\(c_begin \+ channels_per_block, "
        r"group_begin \+ channels_per_group\);",
        "const index_t c_end = c_begin + channels_per_block;",
    ),
    Mutant(
        "grad-masks-last-channel-dropped",
        TILED,
        r"const index_t c_end = c_begin \+ channels_per_group;",
        "const index_t c_end = c_begin + channels_per_group - 1;",
    ),
    # indexing
    Mutant(
        "general-wrong-group-index",
        GENERAL,
        r"const index_t group = strip / strips_per_group;",
        "const index_t group = strip % g.group_size;",
    ),
    Mutant(
        "tiled-wrong-mask-channel",
        TILED,
        r"\(p\.group \* TAPS \+ t\) \* ms\.c \+ y \* ms\.h \+",
        "(p.group * K + t) * ms.c + y * ms.h +",
    ),
    Mutant(
        "general-transposed-mask-tap",
        GENERAL,
        r"mask_pixel \+ \(i \* g\.kernel_size \+ j\) \* mask_strides\.c",
        "mask_pixel + (j * g.kernel_size + i) * mask_strides.c",
    ),
    Mutant("pair-store-swapped", TILED, r"make_float2\(a, b\)", "make_float2(b, a)"),
    Mutant(
        "general-grad-masks-tap-column",
        GENERAL,
        r"\(tap % kernel_size - radius\) \* g\.dilation",
        "(tap / kernel_size - radius) * g.dilation",
    ),
    Mutant(
        "general-forward-single-pass",
        GENERAL,
        r"index < total; index \+= grid_stride\(\)",
        "index < total; index = total",
    ),
    Mutant(
        "forward-mask-tap-stride",
        TILED,
        r"tap_step = ms\.c;",
        "tap_step = ms.w;",
    ),
    Mutant(
        "forward-halo-slot-row-bound",
        TILED,
        r"r < rows && k < cols && row >= 0 && row < height",
        "r < rows && k < cols && row >= 0 && row <= height",
    ),
    # special values
    Mutant(
        "forward-outside-tap-mask-loaded",
        TILED,
        r"\} else if \(inside && tap_in_image\) \{",
        "} else if (inside) {",
    ),
    Mutant(
        "forward-last-batch-overrun",
        TILED,
        r"const int count = min\(channel_batch, channel_count - c0\);",
        "const int count = channel_batch;",
    ),
    # softmax of the fused normaliser
    Mutant(
        "softmax-without-max-subtraction",
        TILED,
        r"values\[t\] = accumulate_exp\(values\[t\] - largest\);",
        "values[t] = accumulate_exp(values[t]);",
    ),
    Mutant(
        "fused-grad-logits-without-the-dot-term",
        TILED,
        r"probability\[t\] \* \(sums\[t \* LANES\] - dot\)",
        "probability[t] * sums[t * LANES]",
    ),
    Mutant(
        "fused-grad-features-normaliser-without-max",
        TILED,
        r"shared\[2 \* e\] = largest;",
        "shared[2 * e] = 0;",
    ),
    # low-precision conversions
    Mutant(
        "fp16-ties-up",
        COMMON,
        r"remainder > 0x1000u \|\| \(remainder == 0x1000u && \(result & 1u\)\)",
        "remainder >= 0x1000u",
    ),
    Mutant(
        "fp16-subnormal-shift-off-by-one",
        COMMON,
        r"const unsigned int shift = 126u - exponent;",
        "const unsigned int shift = 125u - exponent;",
    ),
    Mutant(
        "fp16-subnormal-load-scale",
        COMMON,
        r"\(float\)mantissa \* 5\.9604644775390625e-8f",
        "(float)mantissa * 1.1920928955078125e-7f",
    ),
    Mutant(
        "bf16-truncation",
        COMMON,
        r"const unsigned int rounding = 0x7FFFu \+ \(\(x >> 16\) & 1u\);",
        "const unsigned int rounding = 0u;",
    ),
    Mutant(
        "fp16-hardware-narrowing-toward-zero",
        COMMON,
        r'asm\("cvt\.rn\.f16\.f32 %0, %1;"',
        'asm("cvt.rz.f16.f32 %0, %1;"',
    ),
    Mutant(
        "bf16-hardware-narrowing-toward-zero",
        COMMON,
        r'asm\("cvt\.rn\.bf16\.f32 %0, %1;"',
        'asm("cvt.rz.bf16.f32 %0, %1;"',
    ),
    Mutant(
        "bf16-hardware-narrowing-on-sm75",
        COMMON,
        r"__CUDA_ARCH__ >= 800",
        "__CUDA_ARCH__ >= 700",
    ),
    Mutant(
        "bf16-infinity-made-nan",
        COMMON,
        r"if \(\(x & 0x7FFFFFFFu\) > 0x7F800000u\)",
        "if ((x & 0x7FFFFFFFu) >= 0x7F800000u)",
    ),
)

MUTANTS += tuple(
    Mutant(name, GENERAL, *change) for name, change in {**STRIDE_DILATION, **STRIPS}.items()
)
MUTANTS += tuple(Mutant(name, *spec) for name, spec in BARRIERS.items())
MUTANTS += tuple(Mutant(*spec) for spec in NUMERICS)
MUTANTS += tuple(Mutant(*spec) for spec in GRAD_MASKS_TILED)
MUTANTS += tuple(Mutant(*spec) for spec in GRAD_FEATURES_TILED)
MUTANTS += tuple(Mutant(*spec) for spec in FORWARD_TILED)
