"""The planner's whole plan space, launched on the simulator and checked.

The domain is every input the planner decides on: dtype, kernel size (tiled
and not), every scale 1..9 with N >= 1, strides 2 and 3 and dilations 2 and 3
(alone, together, and dilation with a scale), every requested variant,
pair-aligned and misaligned tensors, no channels, and a shape with several
tiles, channel slices and batches. A dry run (planner only, no kernels) lists what each domain
point would launch; a point runs for real when it adds a (kernel, k, s) or a
(kernel, plan branch) not yet launched. Every real run is checked against the
float64 reference with canaries around every tensor.

Coverage then fails if any kernel a module defines is never launched, any
dry-run target is not reached, or any declared plan branch is never taken.
"""

from __future__ import annotations

import functools
import itertools
import shutil

import numpy as np
import pytest

from cases import assert_close, make_exact_inputs

torch = pytest.importorskip("torch")

import kernel_harness as harness  # noqa: E402

from carafe_cupy._kernels import sources as _sources  # noqa: E402
from carafe_cupy._plan import planner as _planner  # noqa: E402
from carafe_cupy._plan import record as _launch_record  # noqa: E402
from carafe_cupy._runtime import launch as _launch  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)

DTYPES = {name: getattr(torch, name) for name in _sources.SUPPORTED_DTYPES}
KERNEL_SIZES = (*_sources.TILED_KERNEL_SIZES, 1, 9)  # 1, 9: no tiled kernels
SCALES = tuple(range(1, _planner.MAX_TILED_BACKWARD_SCALE + 2))  # one past the tiled limit
LAYOUTS = {"aligned": 2, "misaligned": 1}  # frame padding; odd puts pairs off alignment
# (N, C, H, W, G) before k and s. RICH: several tiles in x (80 outputs at s = 2,
# past one 64-wide pair tile) and y, two groups of 11 channels (two slices,
# 6 + 5: a partial slice and partial batches; the last slice of the last group
# ends at the last channel). SMALL: two channels per group, so channel -> group
# is tested. NO_CHANNELS: grad_masks of zero channels.
RICH, SMALL, NO_CHANNELS = (1, 22, 5, 40, 2), (1, 4, 2, 3, 2), (1, 0, 2, 3, 1)
# (N, C, H, W, G) for strides and dilations: odd sizes, so the last window center
# is the last row and column at t = 2 and a partial step at t = 3; groups of five
# channels, whole strips and a partial one in the general kernels
WINDOWED = (1, 10, 7, 5, 2)
# (s, t, d) beyond CARAFE: every one runs the general kernels
WINDOWS = ((1, 2, 1), (1, 3, 1), (1, 1, 2), (1, 2, 2), (1, 3, 3), (2, 1, 2))


def domain():
    """Every point the planner is asked about: (dtype, config, variant, layout),
    config being (N, C, H, W, k, G, s, stride, dilation)."""
    shapes = [(RICH, 2)] + [(SMALL, s) for s in SCALES] + [(NO_CHANNELS, 2)]
    configs = [(*shape[:4], shape[4], (s, 1, 1)) for shape, s in shapes]
    configs += [(*WINDOWED[:4], WINDOWED[4], window) for window in WINDOWS]
    for (n, c, h, w, g, (s, t, d)), dtype, k in itertools.product(configs, DTYPES, KERNEL_SIZES):
        for variant, layout in itertools.product(_planner.VARIANTS, LAYOUTS):
            yield dtype, (n, c, h, w, k, g, s, t, d), variant, layout


def plan_point(dtype, config, variant, layout) -> None:
    """Launch a domain point's kernels on made-up addresses (under a dry run)."""
    n, c, h, w, k, g, s, t, d = config
    geometry = _launch.Geometry(n, c, h, w, k, g, s, t, d)
    pad = LAYOUTS[layout]
    out_shape = (n, c, geometry.out_height, geometry.out_width)
    features, output = (
        harness.framed_ref(shape, dtype, pad) for shape in ((n, c, h, w), out_shape)
    )
    masks = harness.framed_ref((n, g * k * k, *out_shape[2:]), dtype, pad)
    logits = harness.framed_ref((n, g * k * k * s * s, h, w), dtype, pad)
    try:
        with _planner.forced_variant(variant):
            _launch.launch_forward(geometry, features, masks, output)
            _launch.launch_backward(geometry, output, features, masks, features, masks)
    except ValueError as error:  # a forced variant that cannot run this
        assert variant not in ("auto", "general"), error
        return
    if variant == "auto" and layout == "aligned" and _planner.fused_supported(geometry, dtype):
        _launch.launch_fused_forward(geometry, features, logits, output)
        _launch.launch_fused_backward(geometry, output, features, logits, features, logits)


def launch_point(dtype, config, variant, layout):
    """Run a domain point's kernels; return (what, got, wanted) triples against
    the float64 reference."""
    n, c, h, w, k, g, s, t, d = config
    features, masks, grad_output = (
        torch.from_numpy(a).to(DTYPES[dtype]) for a in make_exact_inputs(config)
    )
    pad = LAYOUTS[layout]
    try:
        with _planner.forced_variant(variant):
            output = harness.run_forward(features, masks, k, g, s, pad, t, d)
            grads = harness.run_backward(grad_output, features, masks, k, g, s, pad, t, d)
    except ValueError as error:  # a forced variant that cannot run this
        assert variant not in ("auto", "general"), error
        return []
    want = harness.reference(grad_output, features, masks, k, g, s, t, d)
    checks = list(zip(("output", "grad_features", "grad_masks"), (output, *grads), want))
    geometry = _launch.Geometry(n, c, h, w, k, g, s, t, d)
    if variant == "auto" and layout == "aligned" and _planner.fused_supported(geometry, dtype):
        generator = torch.Generator().manual_seed(k * 10 + s)
        logits = 3 * torch.randn(n, g * k * k * s * s, h, w, generator=generator)
        logits = logits.to(DTYPES[dtype])
        fused = harness.run_fused(grad_output, features, logits, k, g, s, pad)
        want = harness.fused_reference(grad_output, features, logits, k, g, s)
        checks += zip(("fused output", "fused grad_features", "grad_logits"), fused, want)
    return checks


def targets(records) -> set[tuple]:
    """What launches cover: (kernel, kernel size, scale, stride, dilation) and
    (kernel, plan branch); the general kernels serve every kernel size, stride and
    dilation, so each counts for them too."""
    covered = set()
    for record in records:
        sizes = f"k={record.kernel_size} s={record.scale_factor}"
        sizes += f" t={record.stride} d={record.dilation}"
        covered.add((record.kernel, sizes))
        covered.update((record.kernel, branch) for branch in _launch_record.plan_branches(record))
    return covered


@functools.cache
def drive(dtype: str):
    """Plan every domain point of ``dtype`` dry, run those that add targets.

    Returns (planned targets, launch records, failures)."""
    planned, records, failures = set(), [], []
    for point in domain():
        if point[0] != dtype:
            continue
        with harness.simulator(dry_run=True), _launch_record.recording() as dry:
            plan_point(*point)
        wanted = targets(dry)
        planned |= wanted
        if wanted <= targets(records):
            continue
        try:
            with harness.simulator(), _launch_record.recording() as launched:
                checks = launch_point(*point)
            records += launched
            for what, got, want in checks:
                assert_close(got.double().numpy(), np.asarray(want), dtype, what)
        except AssertionError as error:
            failures.append(f"{point}: {error}")
    return planned, records, failures


@pytest.mark.parametrize("dtype", DTYPES)
def test_plan_space_matches_the_reference(dtype):
    _, records, failures = drive(dtype)
    assert records
    assert not failures, "\n".join(failures[:10])


def defined_kernels() -> dict[str, set[str]]:
    """Per module, the kernels its source defines (as the simulator finds them)."""
    from carafe_cupy._sim import build as sim_build

    compiler = sim_build.find_compiler()
    return {
        module: set(sim_build.kernel_names(_sources.kernel_source(module), compiler, []))
        for module in _sources.all_module_names()
    }


def test_every_defined_kernel_is_launched():
    launched = {record.kernel for dtype in DTYPES for record in drive(dtype)[1]}
    for module, kernels in defined_kernels().items():
        assert kernels == set(_sources.module_kernel_names(module)), module
        assert not kernels - launched, f"{module}: never launched {sorted(kernels - launched)}"


def test_every_planned_target_and_plan_branch_is_launched():
    taken = set()
    for dtype in DTYPES:
        planned, records, _ = drive(dtype)
        missing = planned - targets(records)
        assert not missing, f"{dtype}: planned but not launched: {sorted(missing)[:10]}"
        taken |= {branch for record in records for branch in _launch_record.plan_branches(record)}
    assert not set(_launch_record.PLAN_BRANCHES) - taken, "plan branches never taken"
