"""Which kernels a CARAFE call runs, and with what grid, block, shared memory
and tiling. Pure Python: no CuPy, no device, no pointers beyond their alignment.

The launcher (``_runtime.launch``) and the cost model (``_profile``) share these plans.
A plan depends only on the geometry, the tensors' dtype, strides and alignment,
the requested variant and the target GPU (``PlanTarget``: SM count and
architecture; an H100 when not given), so it is cached on exactly those.
"""

from __future__ import annotations

import functools

from .._kernels.constants import FEATURES_SLOTS  # noqa: F401 (re-exported)
from .._kernels.names import (
    TILED_KERNEL_SIZES,
    KernelId,
    fused_instantiated,
    general_kernels,
)
from .features_tiles import (  # noqa: F401 (re-exported for the cost model and tests)
    faster_features_plan,
    features_quad_plan,
    input_tile_plan,
    padded_sub_plane,
)
from .target import DEFAULT_TARGET, PlanTarget  # noqa: F401 (re-exported)
from .tiles import (  # noqa: F401 (re-exported for the cost model and tests)
    FORWARD_PROLOGUE_BATCHES,
    FULL_WAVE_BLOCKS,
    PLANNED_SMS,
    Operand,
    forward_quad_plan,
    halo_extent,
    masks_quad_plan,
    masks_row_plan,
    output_tile_plan,
    pairs_fit,
)
from .types import (  # noqa: F401 (re-exported: the planner's public names)
    ACCUMULATOR_SIZE,
    CHANNEL_BATCH_MAX,
    GENERAL_FEATURES_STRIP,
    GENERAL_FORWARD_STRIP,
    GENERAL_TAP_STRIP,
    ITEMSIZE,
    MAX_BLOCKS,
    MAX_GRID_X,
    MAX_TILED_BACKWARD_SCALE,
    SHARED_MEMORY_LIMIT,
    THREADS_PER_BLOCK,
    TILE_THREADS,
    VARIANTS,
    Geometry,
    Launch,
    TensorRef,
    forced_variant,
    requested_variant,
)

# ---------------------------------------------------------------- launch shapes


def _operands(refs: tuple[TensorRef | None, ...]) -> tuple[Operand, ...]:
    return tuple(None if ref is None else (tuple(ref.strides), ref.pointer % 16) for ref in refs)


def grid_for(total: int) -> tuple[int, int, int]:
    """The general kernels' grid: one thread per element, capped (grid-stride loops)."""
    blocks = min(MAX_BLOCKS, -(-total // THREADS_PER_BLOCK))
    return (blocks, 1, 1)


def general_threads(kernel: KernelId, geometry: Geometry) -> int:
    """Threads a general kernel runs: grad_masks one per output pixel and strip of
    GENERAL_TAP_STRIP taps of a group, the others one per pixel and strip of
    channels of a group (GENERAL_FORWARD_STRIP, GENERAL_FEATURES_STRIP)."""
    g = geometry
    if kernel.operation == "grad_masks":
        tap_strips = -(-(g.kernel_size**2) // GENERAL_TAP_STRIP)
        return g.batch * g.group_size * tap_strips * g.out_height * g.out_width
    per_group = g.channels // g.group_size
    if kernel.operation == "grad_features":
        strips = g.batch * g.group_size * -(-per_group // GENERAL_FEATURES_STRIP)
        return strips * g.height * g.width
    strips = g.batch * g.group_size * -(-per_group // GENERAL_FORWARD_STRIP)
    return strips * g.out_height * g.out_width


def _general(
    kernel: KernelId, operands: tuple[int, int, int], geometry: Geometry
) -> tuple[Launch, ...]:
    total = general_threads(kernel, geometry)
    if total == 0:
        return ()
    block = (THREADS_PER_BLOCK, 1, 1)
    return (Launch(kernel.module, kernel.name, grid_for(total), block, 0, operands),)


def _choose(variant: str, plans: dict[str, Launch | None], what: str) -> Launch | None:
    """The requested variant's launch; None means the general kernels."""
    plans = {key: plan for key, plan in plans.items() if plan is not None}
    if variant == "general":
        return None
    if variant == "auto":
        return plans.get("tiled_pair") or plans.get("tiled")
    plan = plans.get(variant)
    if plan is None:
        raise ValueError(f"carafe: the {variant!r} kernel variant cannot run {what}")
    return plan


def _tiled_applies(geometry: Geometry) -> bool:
    """The tiled kernels are built for k in TILED_KERNEL_SIZES, stride 1, dilation 1;
    every other reassembly runs the general kernels."""
    return geometry.kernel_size in TILED_KERNEL_SIZES and geometry.is_carafe


# ---------------------------------------------------------------- plans per call
#
# Each public function takes the call's tensors (None where absent) and returns
# the launches in order; the cached function underneath sees only their layout.


def plan_forward(
    geometry: Geometry,
    features: TensorRef,
    masks: TensorRef,
    output: TensorRef,
    target: PlanTarget = DEFAULT_TARGET,
) -> tuple[Launch, ...]:
    """output = carafe(features, masks). Operands: 0 features, 1 masks, 2 output."""
    layout = _operands((features, masks, output))
    return _forward(geometry, features.dtype, layout, requested_variant(), target)


@functools.lru_cache(maxsize=512)
def _forward(
    geometry: Geometry, dtype: str, layout, variant: str, target: PlanTarget
) -> tuple[Launch, ...]:
    total = geometry.batch * geometry.channels * geometry.out_height * geometry.out_width
    if total == 0:
        return ()
    plans = {}
    if _tiled_applies(geometry):
        slots, k = (0, 1, None, 2), geometry.kernel_size
        plans["tiled"] = output_tile_plan(
            geometry, dtype, KernelId("forward", dtype, k), False, True, slots, target
        )
        if pairs_fit(geometry, dtype, layout[1:]):
            plans["tiled_pair"] = forward_quad_plan(
                geometry, dtype, KernelId("forward", dtype, k, 4), slots, target
            )
    plan = _choose(variant, plans, "this forward")
    if plan is not None:
        return (plan,)
    return _general(KernelId("forward", dtype), (0, 1, 2), geometry)


def plan_backward(
    geometry: Geometry,
    grad_output: TensorRef,
    features: TensorRef,
    masks: TensorRef,
    grad_features: TensorRef | None,
    grad_masks: TensorRef | None,
    target: PlanTarget = DEFAULT_TARGET,
) -> tuple[Launch, ...]:
    """Whichever of grad_features / grad_masks is given. Operands: 0 grad_output,
    1 features, 2 masks, 3 grad_features, 4 grad_masks."""
    layout = _operands((grad_output, features, masks, grad_features, grad_masks))
    return _backward(geometry, grad_output.dtype, layout, requested_variant(), target)


@functools.lru_cache(maxsize=512)
def _backward(
    geometry: Geometry, dtype: str, layout, variant: str, target: PlanTarget
) -> tuple[Launch, ...]:
    _, general_features, general_masks = general_kernels(dtype)
    k = geometry.kernel_size
    if geometry.batch * geometry.channels == 0:  # zero channels: grad_masks is all zeros
        return _general(general_masks, (0, 1, 4), geometry) if layout[4] else ()
    launches: tuple[Launch, ...] = ()
    if layout[3] is not None:
        plans = {}
        if _tiled_applies(geometry):
            # one layout only: "tiled" is one pixel a thread, "tiled_pair" four
            # where that kernel runs (s = 2), else one; auto takes the one whose
            # grid fits the GPU better (grid_fit)
            slots = (0, 2, None, 3)
            one = input_tile_plan(
                geometry, dtype, KernelId("grad_features", dtype, k), False, slots, target
            )
            quad = features_quad_plan(
                geometry, dtype, KernelId("grad_features", dtype, k, 4), False, slots, target
            )
            plans["tiled"], plans["tiled_pair"] = one, quad or one
            if variant == "auto":
                plans["tiled_pair"] = faster_features_plan(geometry, dtype, one, quad, target)
        plan = _choose(variant, plans, "this grad_features")
        launches += (plan,) if plan else _general(general_features, (0, 2, 3), geometry)
    if layout[4] is not None:
        plans = {}
        if _tiled_applies(geometry):
            slots = (0, 1, None, 4)
            plans["tiled"] = masks_row_plan(
                geometry, dtype, KernelId("grad_masks", dtype, k), False, slots
            )
            if pairs_fit(geometry, dtype, (layout[0], layout[4])):
                # forced, the whole-kernel blocks; auto, the form grid_fit finds faster
                plans["tiled_pair"] = masks_quad_plan(
                    geometry, dtype, KernelId("grad_masks", dtype, k, 4), slots, target,
                    fit_grid=variant == "auto",
                )
        plan = _choose(variant, plans, "this grad_masks")
        launches += (plan,) if plan else _general(general_masks, (0, 1, 4), geometry)
    return launches


# ---------------------------------------------------------------- fused normaliser


@functools.lru_cache(maxsize=512)
def fused_supported(geometry: Geometry, dtype: str) -> bool:
    """Whether the fused logits kernels cover this geometry (else compose unfused)."""
    if not (_tiled_applies(geometry) and fused_instantiated(dtype, geometry.kernel_size)):
        return False
    # sized for fp64's accumulators, the largest: one answer for every dtype
    k = geometry.kernel_size
    return (
        output_tile_plan(geometry, "float64", KernelId("fused_forward", dtype, k), False, True, ())
        is not None
        and input_tile_plan(
            geometry, "float64", KernelId("fused_grad_features", dtype, k), True, ()
        )
        is not None
        and masks_row_plan(geometry, "float64", KernelId("fused_grad_logits", dtype, k), False, ())
        is not None
    )


def plan_fused_forward(
    geometry: Geometry,
    features: TensorRef,
    logits: TensorRef,
    output: TensorRef,
    target: PlanTarget = DEFAULT_TARGET,
) -> tuple[Launch, ...]:
    """output = carafe(features, softmax(pixel_shuffle(logits))), masks never stored.
    Operands: 0 features, 1 logits, 2 output. Needs ``fused_supported``.
    2 x 2 pixels per thread where the output allows, unless the "tiled" variant
    (one pixel per thread) is forced."""
    layout = _operands((features, logits, output))
    return _fused_forward(geometry, features.dtype, layout, requested_variant(), target)


@functools.lru_cache(maxsize=512)
def _fused_forward(
    geometry: Geometry, dtype: str, layout, variant: str, target: PlanTarget
) -> tuple[Launch, ...]:
    if geometry.batch * geometry.channels == 0:
        return ()
    k, slots = geometry.kernel_size, (0, 1, None, 2)
    plan = None
    # logits are read one element at a time: only the output needs the pair layout
    if variant != "tiled" and pairs_fit(geometry, dtype, layout[2:]):
        kernel = KernelId("fused_forward", dtype, k, 4)
        plan = forward_quad_plan(geometry, dtype, kernel, slots, target)
    if plan is None:
        kernel = KernelId("fused_forward", dtype, k)
        plan = output_tile_plan(geometry, dtype, kernel, False, True, slots, target)
    assert plan is not None  # fused_supported() was checked by the caller
    return (plan,)


@functools.lru_cache(maxsize=512)
def plan_fused_backward(
    geometry: Geometry, dtype: str, target: PlanTarget = DEFAULT_TARGET
) -> tuple[Launch, ...]:
    """Gradients of the fused forward. Operands: 0 grad_output, 1 features,
    2 logits, 3 grad_features, 4 grad_logits. Needs ``fused_supported``."""
    if geometry.batch == 0:
        return ()
    k = geometry.kernel_size
    launches: tuple[Launch, ...] = ()
    if geometry.channels:
        kernel = KernelId("fused_grad_features", dtype, k)
        plan = input_tile_plan(geometry, dtype, kernel, True, (0, 2, None, 3), target)
        assert plan is not None
        launches += (plan,)
    kernel = KernelId("fused_grad_logits", dtype, k)
    plan = masks_row_plan(geometry, dtype, kernel, False, (0, 1, 2, 4))
    assert plan is not None
    return (*launches, plan)
