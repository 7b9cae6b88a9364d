"""Which kernels a CARAFE call runs, and with what grid, block, shared memory
and tiling. Pure Python: no CuPy, no device, no pointers beyond their alignment.

The launcher (``_launch``) and the cost model (``_profile``) share these plans.
A plan depends only on the geometry, the tensors' dtype, strides and alignment,
and the requested variant, so it is cached on exactly those.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

from ._plan_types import (  # noqa: F401 (re-exported: the planner's public names)
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
from ._sources import (
    KERNEL_MODULE,
    TILED_KERNEL_SIZES,
    fused_instantiated,
    kernel_names,
    pairs_instantiated,
    tiled_module_name,
)

# ---------------------------------------------------------------- launch shapes

# An operand as plans see it: element strides and the pointer's offset within 16 bytes.
_Operand = Optional[tuple[tuple[int, int, int, int], int]]


def _operands(refs: tuple[TensorRef | None, ...]) -> tuple[_Operand, ...]:
    return tuple(None if ref is None else (tuple(ref.strides), ref.pointer % 16) for ref in refs)


def grid_for(total: int) -> tuple[int, int, int]:
    """The general kernels' grid: one thread per element, capped (grid-stride loops)."""
    blocks = min(MAX_BLOCKS, -(-total // THREADS_PER_BLOCK))
    return (blocks, 1, 1)


def general_threads(kernel: str, geometry: Geometry) -> int:
    """Threads a general kernel runs: grad_masks one per output pixel and strip of
    GENERAL_TAP_STRIP taps of a group, the others one per pixel and strip of
    channels of a group (GENERAL_FORWARD_STRIP, GENERAL_FEATURES_STRIP)."""
    g = geometry
    if "backward_masks" in kernel:
        tap_strips = -(-g.kernel_size**2 // GENERAL_TAP_STRIP)
        return g.batch * g.group_size * tap_strips * g.out_height * g.out_width
    per_group = g.channels // g.group_size
    if "backward_features" in kernel:
        strips = g.batch * g.group_size * -(-per_group // GENERAL_FEATURES_STRIP)
        return strips * g.height * g.width
    strips = g.batch * g.group_size * -(-per_group // GENERAL_FORWARD_STRIP)
    return strips * g.out_height * g.out_width


def _general(kernel: str, total: int, operands: tuple[int, int, int]) -> tuple[Launch, ...]:
    if total == 0:
        return ()
    block = (THREADS_PER_BLOCK, 1, 1)
    return (Launch(KERNEL_MODULE, kernel, grid_for(total), block, 0, operands),)


def _halo_extent(outputs: int, scale: int, kernel_size: int) -> int:
    return (outputs - 1 + scale - 1) // scale + kernel_size


def _pairs_fit(geometry: Geometry, dtype: str, operands: tuple[_Operand, ...]) -> bool:
    """Two pixels per thread: even s, and 2-element aligned, x-contiguous tensors."""
    if not pairs_instantiated(dtype, geometry.kernel_size) or geometry.scale_factor % 2:
        return False
    alignment = 2 * ITEMSIZE[dtype]
    return all(
        strides[3] == 1
        and all(stride % 2 == 0 for stride in strides[:3])
        and offset % alignment == 0
        for strides, offset in operands
    )


def _channel_batch(bytes_per_channel: int, fixed_bytes: int = 0, per_batch_bytes: int = 0) -> int:
    for batch in range(CHANNEL_BATCH_MAX, 0, -1):
        if batch * (bytes_per_channel + per_batch_bytes) + fixed_bytes <= SHARED_MEMORY_LIMIT:
            return batch
    return 0


# grad_features grids aim at about this many blocks: two waves of 2 blocks/SM on a
# 132-SM GPU. Each extra channel slice re-reads its tile's masks and repeats the
# prologue, so slices are added only until the grid is that full.
FORWARD_TARGET_BLOCKS = 528


def _target_channels_per_block(geometry: Geometry, blocks_per_slice: int) -> int:
    """Channels per block of a sliced grid: whole channel batches, split evenly
    (at least 16 channels a slice) into the slice count nearest the target grid."""
    per_group = geometry.channels // geometry.group_size
    batches = -(-per_group // CHANNEL_BATCH_MAX)
    wanted = FORWARD_TARGET_BLOCKS / max(1, blocks_per_slice)
    even = [n for n in range(1, max(1, per_group // 16) + 1) if batches % n == 0]
    slices = min(even, key=lambda n: (abs(math.log(n / wanted)) if wanted > 0 else n, n))
    return min(per_group, batches // slices * CHANNEL_BATCH_MAX)


# The tiled forward's slices are chosen by the work each SM is dealt: blocks go to the
# SMs of a 132-SM GPU (FORWARD_TARGET_BLOCKS / 4), so an SM runs ceil(blocks / 132) of
# them, and a block costs its prologue (block position, masks into registers, tap tests,
# halo slots: about 1.3 staged batches of instructions in the k5 pair kernel's SASS)
# plus one unit per channel batch.
PLANNED_SMS = FORWARD_TARGET_BLOCKS // 4
FORWARD_PROLOGUE_BATCHES = 1.3
FULL_WAVE_BLOCKS = 2 * PLANNED_SMS


def _forward_channels_per_block(geometry: Geometry, blocks_per_slice: int, batch: int) -> int:
    """Channels per block of the tiled forward: whole channel batches, at least 16
    channels a slice (or the whole group), picked to minimise the blocks per SM
    times the batches (plus prologue) per block; ties go to fewer slices. The last
    slice may be shorter."""
    per_group = geometry.channels // geometry.group_size
    if per_group <= 16:
        return per_group
    smallest = 16
    whole_batches = range(1, -(-per_group // batch) + 1)
    candidates = {min(per_group, batches * batch) for batches in whole_batches}
    candidates = {n for n in candidates if n >= smallest}
    # At least one full wave (2 blocks per SM) where the slices allow it: one block
    # of 8 warps per SM cannot hide its latencies, whatever its instruction count.
    wave = min(FULL_WAVE_BLOCKS, blocks_per_slice * -(-per_group // min(candidates)))
    candidates = {n for n in candidates if blocks_per_slice * -(-per_group // n) >= wave}

    def dealt_work(per_block: int) -> tuple[float, int]:
        slices = -(-per_group // per_block)
        blocks_per_sm = -(-blocks_per_slice * slices // PLANNED_SMS)
        return blocks_per_sm * (FORWARD_PROLOGUE_BATCHES + -(-per_block // batch)), slices

    return min(candidates, key=dealt_work)


def _output_tile_plan(
    geometry: Geometry, dtype: str, kernel: str, pair: bool, slice_channels: bool, operands
) -> Launch | None:
    """A kernel whose block owns an output tile (forward, grad_masks, fused logits)."""
    k, s = geometry.kernel_size, geometry.scale_factor
    if slice_channels and max(geometry.out_height, geometry.out_width, geometry.channels) >= 2**31:
        return None  # the forward kernels keep sizes and coordinates in 32 bits
    pairs = 2 if pair else 1
    tile_w, tile_h = TILE_THREADS[0] * pairs, TILE_THREADS[1]
    pitch = (tile_w - 1 + pairs - 1) // pairs + k
    halo_bytes = _halo_extent(tile_h, s, k) * pitch * ACCUMULATOR_SIZE[dtype]
    batch = _channel_batch(halo_bytes)
    if batch == 0:
        return None
    tiles = -(-geometry.out_width // tile_w) * -(-geometry.out_height // tile_h)
    blocks = tiles * geometry.batch * geometry.group_size
    per_group = geometry.channels // geometry.group_size
    per_block = per_group
    if slice_channels:
        per_block = max(1, _forward_channels_per_block(geometry, blocks, batch))
    slices = max(1, -(-per_group // per_block))
    if blocks * slices > MAX_GRID_X:
        return None  # the general kernels loop over any size
    return Launch(
        tiled_module_name(dtype, k),
        kernel,
        (blocks * slices, 1, 1),
        (TILE_THREADS[0], TILE_THREADS[1], 1),
        batch * halo_bytes,
        operands,
        (per_block, batch),
    )


MASKS_BATCH = 2  # CARAFE_MASKS_BATCH in carafe_tiled_grad_masks.cuh
MASKS_SUBSETS = TILE_THREADS[1]  # CARAFE_MASKS_SUBSETS: one channel subset per warp


def _masks_row_plan(
    geometry: Geometry, dtype: str, kernel: str, pair: bool, operands
) -> Launch | None:
    """grad_masks and the fused logits gradient: a block per output row of
    32 x pairs pixels, its warps splitting the group's channels into subsets."""
    k = geometry.kernel_size
    pairs = 2 if pair else 1
    tile_w = TILE_THREADS[0] * pairs
    pitch = (tile_w - 1 + pairs - 1) // pairs + k
    staged = MASKS_BATCH * MASKS_SUBSETS * k * pitch
    reduction = MASKS_SUBSETS * k * pairs * TILE_THREADS[0]
    tiles = -(-geometry.out_width // tile_w) * geometry.out_height
    blocks = tiles * geometry.batch * geometry.group_size
    per_group = geometry.channels // geometry.group_size
    per_subset = max(1, -(-per_group // MASKS_SUBSETS))
    if blocks > MAX_GRID_X:
        return None  # the general kernels loop over any size
    return Launch(
        tiled_module_name(dtype, k),
        kernel,
        (blocks, 1, 1),
        (TILE_THREADS[0], TILE_THREADS[1], 1),
        max(staged, reduction) * ACCUMULATOR_SIZE[dtype],
        operands,
        (per_subset, MASKS_BATCH),
    )


FEATURES_SLOTS = 3  # CARAFE_FEATURES_SLOTS in carafe_tiled_grad_features.cuh


def padded_sub_plane(plane: int, tile_cols: int) -> int:
    """grad_features' sub-pixel plane, padded to tile_cols (mod 32) so a warp's
    sub-pixel columns read distinct shared-memory banks (as carafe_tiled.cuh)."""
    return plane + (tile_cols - plane) % 32


def _input_tile_plan(
    geometry: Geometry, dtype: str, kernel: str, from_logits: bool, operands
) -> Launch | None:
    """grad_features: a tile of input pixels, s x s threads each."""
    k, s = geometry.kernel_size, geometry.scale_factor
    if s > MAX_TILED_BACKWARD_SCALE:
        return None
    tile_cols, tile_rows = max(1, TILE_THREADS[0] // s), max(1, TILE_THREADS[1] // s)
    threads = tile_cols * s * tile_rows * s
    accumulator = ACCUMULATOR_SIZE[dtype]
    plane = (tile_rows + k - 1) * s * (tile_cols + k - 1) * s
    staged_plane = s * s * padded_sub_plane((tile_rows + k - 1) * (tile_cols + k - 1), tile_cols)
    partial_pitch = threads + 1  # per channel, odd: no bank conflicts
    batch = _channel_batch(staged_plane * accumulator, per_batch_bytes=partial_pitch * accumulator)
    if batch == 0 or (from_logits and 2 * plane * accumulator > SHARED_MEMORY_LIMIT):
        return None
    shared = batch * (staged_plane + partial_pitch) * accumulator
    if from_logits:
        shared = max(shared, 2 * plane * accumulator)
    blocks = -(-geometry.width // tile_cols) * -(-geometry.height // tile_rows)
    blocks *= geometry.batch * geometry.group_size
    per_block = max(1, _target_channels_per_block(geometry, blocks))
    slices = max(1, -(-(geometry.channels // geometry.group_size) // per_block))
    if blocks * slices > MAX_GRID_X:
        return None  # the general kernels loop over any size
    return Launch(
        tiled_module_name(dtype, k),
        kernel,
        (blocks * slices, 1, 1),
        (tile_cols * s, tile_rows * s, 1),
        shared,
        operands,
        (per_block, batch),
    )


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
    geometry: Geometry, features: TensorRef, masks: TensorRef, output: TensorRef
) -> tuple[Launch, ...]:
    """output = carafe(features, masks). Operands: 0 features, 1 masks, 2 output."""
    layout = _operands((features, masks, output))
    return _forward(geometry, features.dtype, layout, requested_variant())


@functools.lru_cache(maxsize=512)
def _forward(geometry: Geometry, dtype: str, layout, variant: str) -> tuple[Launch, ...]:
    total = geometry.batch * geometry.channels * geometry.out_height * geometry.out_width
    if total == 0:
        return ()
    plans = {}
    if _tiled_applies(geometry):
        kernel, slots = "carafe_forward_tiled", (0, 1, None, 2)
        k = geometry.kernel_size
        plans["tiled"] = _output_tile_plan(
            geometry, dtype, f"{kernel}_k{k}_p1_{dtype}", False, True, slots
        )
        if _pairs_fit(geometry, dtype, layout[1:]):
            plans["tiled_pair"] = _output_tile_plan(
                geometry, dtype, f"{kernel}_k{k}_p2_{dtype}", True, True, slots
            )
    plan = _choose(variant, plans, "this forward")
    if plan is not None:
        return (plan,)
    general = kernel_names(dtype)[0]
    return _general(general, general_threads(general, geometry), (0, 1, 2))


def plan_backward(
    geometry: Geometry,
    grad_output: TensorRef,
    features: TensorRef,
    masks: TensorRef,
    grad_features: TensorRef | None,
    grad_masks: TensorRef | None,
) -> tuple[Launch, ...]:
    """Whichever of grad_features / grad_masks is given. Operands: 0 grad_output,
    1 features, 2 masks, 3 grad_features, 4 grad_masks."""
    layout = _operands((grad_output, features, masks, grad_features, grad_masks))
    return _backward(geometry, grad_output.dtype, layout, requested_variant())


@functools.lru_cache(maxsize=512)
def _backward(geometry: Geometry, dtype: str, layout, variant: str) -> tuple[Launch, ...]:
    _, general_features, general_masks = kernel_names(dtype)
    k = geometry.kernel_size
    masks_total = general_threads(general_masks, geometry)
    if geometry.batch * geometry.channels == 0:  # zero channels: grad_masks is all zeros
        return _general(general_masks, masks_total, (0, 1, 4)) if layout[4] else ()
    launches: tuple[Launch, ...] = ()
    if layout[3] is not None:
        plans = {}
        if _tiled_applies(geometry):
            # one layout only: the pair variant's grad_features is the tiled one
            kernel = f"carafe_backward_features_tiled_k{k}_{dtype}"
            plans["tiled"] = plans["tiled_pair"] = _input_tile_plan(
                geometry, dtype, kernel, False, (0, 2, None, 3)
            )
        plan = _choose(variant, plans, "this grad_features")
        total = general_threads(general_features, geometry)
        launches += (plan,) if plan else _general(general_features, total, (0, 2, 3))
    if layout[4] is not None:
        plans = {}
        if _tiled_applies(geometry):
            kernel, slots = "carafe_backward_masks_tiled", (0, 1, None, 4)
            plans["tiled"] = _masks_row_plan(
                geometry, dtype, f"{kernel}_k{k}_p1_{dtype}", False, slots
            )
            if _pairs_fit(geometry, dtype, (layout[0], layout[4])):
                plans["tiled_pair"] = _masks_row_plan(
                    geometry, dtype, f"{kernel}_k{k}_p2_{dtype}", True, slots
                )
        plan = _choose(variant, plans, "this grad_masks")
        launches += (plan,) if plan else _general(general_masks, masks_total, (0, 1, 4))
    return launches


# ---------------------------------------------------------------- fused normaliser


@functools.lru_cache(maxsize=512)
def fused_supported(geometry: Geometry, dtype: str) -> bool:
    """Whether the fused logits kernels cover this geometry (else compose unfused)."""
    return (
        _tiled_applies(geometry)
        and fused_instantiated(dtype, geometry.kernel_size)
        and _output_tile_plan(geometry, "float64", "", False, True, ()) is not None
        and _input_tile_plan(geometry, "float64", "", True, ()) is not None
        and _masks_row_plan(geometry, "float64", "", False, ()) is not None
    )


def plan_fused_forward(
    geometry: Geometry, features: TensorRef, logits: TensorRef, output: TensorRef
) -> tuple[Launch, ...]:
    """output = carafe(features, softmax(pixel_shuffle(logits))), masks never stored.
    Operands: 0 features, 1 logits, 2 output. Needs ``fused_supported``.
    Two pixels per thread where the output allows, unless the "tiled" variant
    (one pixel per thread) is forced."""
    layout = _operands((features, logits, output))
    return _fused_forward(geometry, features.dtype, layout, requested_variant())


@functools.lru_cache(maxsize=512)
def _fused_forward(geometry: Geometry, dtype: str, layout, variant: str) -> tuple[Launch, ...]:
    if geometry.batch * geometry.channels == 0:
        return ()
    k, slots = geometry.kernel_size, (0, 1, None, 2)
    plan = None
    # logits are read one element at a time: only the output needs the pair layout
    if variant != "tiled" and _pairs_fit(geometry, dtype, layout[2:]):
        kernel = f"carafe_fused_forward_k{k}_p2_{dtype}"
        plan = _output_tile_plan(geometry, dtype, kernel, True, True, slots)
    if plan is None:
        kernel = f"carafe_fused_forward_k{k}_{dtype}"
        plan = _output_tile_plan(geometry, dtype, kernel, False, True, slots)
    assert plan is not None  # fused_supported() was checked by the caller
    return (plan,)


@functools.lru_cache(maxsize=512)
def plan_fused_backward(geometry: Geometry, dtype: str) -> tuple[Launch, ...]:
    """Gradients of the fused forward. Operands: 0 grad_output, 1 features,
    2 logits, 3 grad_features, 4 grad_logits. Needs ``fused_supported``."""
    if geometry.batch == 0:
        return ()
    k = geometry.kernel_size
    launches: tuple[Launch, ...] = ()
    if geometry.channels:
        kernel = f"carafe_fused_backward_features_k{k}_{dtype}"
        plan = _input_tile_plan(geometry, dtype, kernel, True, (0, 2, None, 3))
        assert plan is not None
        launches += (plan,)
    kernel = f"carafe_fused_backward_logits_k{k}_{dtype}"
    plan = _masks_row_plan(geometry, dtype, kernel, False, (0, 1, 2, 4))
    assert plan is not None
    return (*launches, plan)
