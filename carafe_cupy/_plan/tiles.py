"""Launch shapes of the tiled kernels: tile sizes, channel batches and slices,
shared memory. Pure Python, used only by the planner (``_plan.planner``)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

from .._kernels.constants import (
    FORWARD_QUAD_ROWS,
    MASKS_BATCH,
    MASKS_QUAD_BATCH,
    MASKS_QUAD_SHARE,
)
from .._kernels.names import (
    KernelId,
    features_quads_instantiated,
    masks_rows_instantiated,
    pairs_instantiated,
)
from .grid_fit import (
    features_cost,
    features_launch_bytes,
    launch_cycles,
    masks_one_row_faster,
    sliced_channels_per_block,
)
from .target import DEFAULT_TARGET, PlanTarget
from .types import (
    ACCUMULATOR_SIZE,
    CHANNEL_BATCH_MAX,
    ITEMSIZE,
    MAX_GRID_X,
    MAX_TILED_BACKWARD_SCALE,
    SHARED_MEMORY_LIMIT,
    TILE_THREADS,
    Geometry,
    Launch,
)

# An operand as plans see it: element strides and the pointer's offset within 16 bytes.
Operand = Optional[tuple[tuple[int, int, int, int], int]]


def halo_extent(outputs: int, scale: int, kernel_size: int) -> int:
    return (outputs - 1 + scale - 1) // scale + kernel_size


def pairs_fit(geometry: Geometry, dtype: str, operands: tuple[Operand, ...]) -> bool:
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


def _target_channels_per_block(
    geometry: Geometry, blocks_per_slice: int, target: PlanTarget = DEFAULT_TARGET
) -> int:
    """Channels per block of a sliced grid: whole channel batches, split evenly
    (at least 16 channels a slice) into the slice count nearest the target grid
    (two full waves of the target GPU: each extra slice re-reads its tile's masks
    and repeats the prologue, so slices are added only until the grid is that full)."""
    per_group = geometry.channels // geometry.group_size
    batches = -(-per_group // CHANNEL_BATCH_MAX)
    wanted = target.features_target_blocks / max(1, blocks_per_slice)
    even = [n for n in range(1, max(1, per_group // 16) + 1) if batches % n == 0]
    slices = min(even, key=lambda n: (abs(math.log(n / wanted)) if wanted > 0 else n, n))
    return min(per_group, batches // slices * CHANNEL_BATCH_MAX)


# The tiled forward's slices are chosen by the work each SM is dealt: blocks go to the
# target GPU's SMs, so an SM runs ceil(blocks / SMs) of them, and a block costs its
# prologue (``target.prologue_batches``, from the kernel's SASS per architecture) plus
# one unit per channel batch. The default target's figures, for tests and readers:
PLANNED_SMS = DEFAULT_TARGET.sms
FORWARD_PROLOGUE_BATCHES = DEFAULT_TARGET.prologue_batches
FULL_WAVE_BLOCKS = DEFAULT_TARGET.full_wave_blocks


def _forward_channels_per_block(
    geometry: Geometry, blocks_per_slice: int, batch: int, target: PlanTarget = DEFAULT_TARGET
) -> int:
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
    wave = min(target.full_wave_blocks, blocks_per_slice * -(-per_group // min(candidates)))
    candidates = {n for n in candidates if blocks_per_slice * -(-per_group // n) >= wave}

    def dealt_work(per_block: int) -> tuple[float, int]:
        slices = -(-per_group // per_block)
        blocks_per_sm = -(-blocks_per_slice * slices // target.sms)
        return blocks_per_sm * (target.prologue_batches + -(-per_block // batch)), slices

    return min(candidates, key=dealt_work)


def output_tile_plan(
    geometry: Geometry,
    dtype: str,
    kernel: KernelId,
    pair: bool,
    slice_channels: bool,
    operands,
    target: PlanTarget = DEFAULT_TARGET,
) -> Launch | None:
    """A kernel whose block owns an output tile (forward, grad_masks, fused logits)."""
    k, s = geometry.kernel_size, geometry.scale_factor
    if slice_channels and max(geometry.out_height, geometry.out_width, geometry.channels) >= 2**31:
        return None  # the forward kernels keep sizes and coordinates in 32 bits
    pairs = 2 if pair else 1
    tile_w, tile_h = TILE_THREADS[0] * pairs, TILE_THREADS[1]
    pitch = (tile_w - 1 + pairs - 1) // pairs + k
    halo_bytes = halo_extent(tile_h, s, k) * pitch * ACCUMULATOR_SIZE[dtype]
    batch = _channel_batch(halo_bytes)
    if batch == 0:
        return None
    tiles = -(-geometry.out_width // tile_w) * -(-geometry.out_height // tile_h)
    blocks = tiles * geometry.batch * geometry.group_size
    per_group = geometry.channels // geometry.group_size
    per_block = per_group
    if slice_channels:
        per_block = max(1, _forward_channels_per_block(geometry, blocks, batch, target))
    slices = max(1, -(-per_group // per_block))
    if blocks * slices > MAX_GRID_X:
        return None  # the general kernels loop over any size
    return Launch(
        kernel.module,
        kernel.name,
        (blocks * slices, 1, 1),
        (TILE_THREADS[0], TILE_THREADS[1], 1),
        batch * halo_bytes,
        operands,
        (per_block, batch),
    )


# The forward with 2 x 2 pixels per thread (carafe_tiled_forward_quad.cuh): blocks
# of 32 x FORWARD_QUAD_ROWS threads over the pair kernel's 64 x 8 output tile.
FORWARD_QUAD_BLOCK = (TILE_THREADS[0], FORWARD_QUAD_ROWS)
FORWARD_QUAD_TILE = (2 * TILE_THREADS[0], 2 * FORWARD_QUAD_ROWS)  # output (cols, rows)


def forward_quad_plan(
    geometry: Geometry, dtype: str, kernel: KernelId, operands, target: PlanTarget = DEFAULT_TARGET
) -> Launch | None:
    """The forward with 2 x 2 pixels per thread (even s): its halo double
    buffered (two batches of CHANNEL_BATCH_MAX planes), channel slices dealt to
    the target's SMs as the other forwards' (a full wave: two blocks an SM, 8 of
    its warps; it holds FORWARD_QUAD_BLOCKS)."""
    k, s = geometry.kernel_size, geometry.scale_factor
    if s % 2 or max(geometry.out_height, geometry.out_width, geometry.channels) >= 2**31:
        return None  # four pixels share an input pixel only for even s; 32-bit sizes
    pitch = FORWARD_QUAD_TILE[0] // 2 + k
    # planes of the widest halo (s = 2) for every even s (compile-time offsets),
    # rounded up to whole slots of the block's threads (every thread stores each)
    threads = FORWARD_QUAD_BLOCK[0] * FORWARD_QUAD_BLOCK[1]
    halo = (FORWARD_QUAD_TILE[1] // 2 + k) * pitch
    halo_bytes = -(-halo // threads) * threads * ACCUMULATOR_SIZE[dtype]
    batch = CHANNEL_BATCH_MAX
    tile_w, tile_h = FORWARD_QUAD_TILE
    blocks = -(-geometry.out_width // tile_w) * -(-geometry.out_height // tile_h)
    blocks *= geometry.batch * geometry.group_size
    per_block = max(1, _forward_channels_per_block(geometry, blocks, batch, target))
    block = (*FORWARD_QUAD_BLOCK, 1)
    shared = 2 * batch * halo_bytes
    return _sliced_launch(geometry, kernel, operands, blocks, per_block, block, shared, batch)


MASKS_SUBSETS = TILE_THREADS[1]  # CARAFE_MASKS_SUBSETS: one channel subset per warp


def masks_row_plan(
    geometry: Geometry, dtype: str, kernel: KernelId, pair: bool, operands
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
    shared = max(staged, reduction) * ACCUMULATOR_SIZE[dtype]
    return _masks_subset_launch(geometry, kernel, operands, tiles, shared)


def _masks_subset_launch(geometry: Geometry, kernel: KernelId, operands, tiles: int,
                         shared: int, batch: int = MASKS_BATCH):
    """A grad_masks launch: a block per output tile, image and group, its warps
    splitting the group's channels into MASKS_SUBSETS subsets of ``batch``-channel
    batches."""
    blocks = tiles * geometry.batch * geometry.group_size
    per_group = geometry.channels // geometry.group_size
    per_subset = max(1, -(-per_group // MASKS_SUBSETS))
    if blocks > MAX_GRID_X:
        return None  # the general kernels loop over any size
    block = (TILE_THREADS[0], TILE_THREADS[1], 1)
    tiling = (per_subset, batch)
    return Launch(kernel.module, kernel.name, (blocks, 1, 1), block, shared, operands, tiling)


def masks_quad_plan(geometry: Geometry, dtype: str, kernel: KernelId, operands,
                    target: PlanTarget = DEFAULT_TARGET, fit_grid: bool = True) -> Launch | None:
    """grad_masks with 2 x 2 pixels per thread (even s): a block per two output
    rows of 64 pixels (and, in the one-kernel-row form, per kernel row), its
    warps splitting the group's channels into subsets; shared memory holds their
    halos, then a round of the parallel reduction (MASKS_QUAD_SHARE units of two
    fp32 values per warp, from every warp). With ``fit_grid``, the one-row form
    where grid_fit finds it faster (short grids); both give the same bits."""
    if geometry.scale_factor % 2:
        return None  # the four pixels share an input pixel only for even s
    k = geometry.kernel_size
    tile_w = TILE_THREADS[0] * 2
    pitch = tile_w // 2 + k
    tiles = -(-geometry.out_width // tile_w) * (geometry.out_height // 2)
    per_subset = max(1, -(-(geometry.channels // geometry.group_size) // MASKS_SUBSETS))
    one_row = fit_grid and masks_rows_instantiated(dtype, k) and masks_one_row_faster(
        geometry, dtype, tiles * geometry.batch * geometry.group_size, per_subset, target
    )
    rows = 1 if one_row else k
    # four channels a batch for the whole kernel at k = 5 (as the kernel's BATCH)
    batch = MASKS_QUAD_BATCH if rows == k == 5 else MASKS_BATCH
    staged = batch * MASKS_SUBSETS * rows * pitch * ACCUMULATOR_SIZE[dtype]
    units = min(2 * rows * k, MASKS_QUAD_SHARE * MASKS_SUBSETS)  # of a reduction round
    reduction = units * MASKS_SUBSETS * TILE_THREADS[0] * 2 * 4
    if one_row:
        kernel = replace(kernel, tap_rows=1)
        tiles *= k  # a block per kernel row: block_position's slices
    shared = max(staged, reduction)
    return _masks_subset_launch(geometry, kernel, operands, tiles, shared, batch)


def padded_sub_plane(plane: int, tile_cols: int) -> int:
    """grad_features' sub-pixel plane, padded to tile_cols (mod 32) so a warp's
    sub-pixel columns read distinct shared-memory banks (as carafe_tiled.cuh)."""
    return plane + (tile_cols - plane) % 32


# grad_features' one-pixel tiles at s = 2 (input columns, rows), the first the
# default: warps of one row of 16 pixels' two sub-pixel columns (the sub-pixel
# planes' padding and the partial sums' odd pitch keep a warp's reads in distinct
# banks only so: 8-column tiles put two rows in a warp and conflict in the
# reduction). The planner takes the one whose launch is shortest (grid_fit):
# 3 rows waste fewer lanes past the bottom of short images (13 rows: 15, not 16).
FEATURES_TILES_S2 = ((16, 4), (16, 3))


def input_tile_plan(
    geometry: Geometry,
    dtype: str,
    kernel: KernelId,
    from_logits: bool,
    operands,
    target: PlanTarget = DEFAULT_TARGET,
) -> Launch | None:
    """grad_features: a tile of input pixels, s x s threads each."""
    s = geometry.scale_factor
    if s > MAX_TILED_BACKWARD_SCALE:
        return None
    default = (max(1, TILE_THREADS[0] // s), max(1, TILE_THREADS[1] // s))
    if from_logits or s != 2:
        planned = _input_tile_launch(
            geometry, dtype, kernel, from_logits, operands, target, default
        )
        return None if planned is None else planned[0]
    plans = [
        _input_tile_launch(geometry, dtype, kernel, from_logits, operands, target, tile)
        for tile in FEATURES_TILES_S2
    ]
    plans = [plan for plan in plans if plan is not None]
    if not plans:
        return None
    # ties: the fewest threads launched (lanes idle past the image's edges)
    return min(plans, key=lambda p: (p[1], p[0].blocks * p[0].threads_per_block))[0]


def _input_tile_launch(
    geometry: Geometry,
    dtype: str,
    kernel: KernelId,
    from_logits: bool,
    operands,
    target: PlanTarget,
    tile: tuple[int, int],
) -> tuple[Launch, float] | None:
    """grad_features with tiles of tile = (columns, rows) input pixels, and its
    launch time by grid_fit (0 for the fused kernel, which is not compared)."""
    k, s = geometry.kernel_size, geometry.scale_factor
    tile_cols, tile_rows = tile
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
    per_group = geometry.channels // geometry.group_size
    block = (tile_cols * s, tile_rows * s, 1)
    if from_logits:
        per_block = max(1, _target_channels_per_block(geometry, blocks, target))
        launch = _sliced_launch(geometry, kernel, operands, blocks, per_block, block, shared, batch)
        return None if launch is None else (launch, 0.0)
    # sliced by the launch's time (grid_fit), as the four-pixel kernel
    cost = replace(features_cost(ITEMSIZE[dtype], k, quad=False), warps=-(-threads // 32))
    traffic = features_launch_bytes(geometry, dtype, tile_cols, tile_rows)
    per_block = max(1, sliced_channels_per_block(cost, per_group, blocks, batch, target, traffic))
    launch = _sliced_launch(geometry, kernel, operands, blocks, per_block, block, shared, batch)
    if launch is None:
        return None
    slices = -(-per_group // per_block)
    return launch, launch_cycles(cost, launch.blocks, per_block, target, traffic, slices)


def _sliced_launch(geometry: Geometry, kernel: KernelId, operands, blocks: int, per_block: int,
                   block: tuple[int, int, int], shared: int, batch: int) -> Launch | None:
    """A launch whose tiles repeat once per slice of per_block channels of a group."""
    slices = max(1, -(-(geometry.channels // geometry.group_size) // per_block))
    if blocks * slices > MAX_GRID_X:
        return None  # the general kernels loop over any size
    grid = (blocks * slices, 1, 1)
    return Launch(kernel.module, kernel.name, grid, block, shared, operands, (per_block, batch))


# grad_features with four input pixels per thread (carafe_tiled_grad_features_quad.cuh):
# s = 2, a warp is one input row of 8 quads times 4 sub-pixels, a block 4 rows.
FEATURES_QUAD_PIXELS = 4
FEATURES_QUAD_SCALE = 2
# input (cols, rows): 32 x 4 pixels, a block of 32 x 4 threads
FEATURES_QUAD_TILE = (
    TILE_THREADS[0] // FEATURES_QUAD_SCALE**2 * FEATURES_QUAD_PIXELS,
    TILE_THREADS[1] // 2,
)


def features_quad_pitches(plane: int) -> tuple[int, int]:
    """The quad kernels' sub-pixel plane (a, b) offset a * A + b * B, as (A, B):
    B at least ``plane`` and 16 (mod 32), A = 2B + 8, so the reads and the
    staging stores hit distinct banks (as features_quad_a_pitch / _b_pitch in
    the .cuh)."""
    b_pitch = plane + (16 - plane) % 32
    return 2 * b_pitch + 8, b_pitch


def features_quad_shared(kernel_size: int) -> tuple[int, int]:
    """The four-pixel grad_features' shared elements: one staged channel (4
    sub-pixel planes of the centre rows, each row padded to a multiple of 4
    columns), and the K mask taps of a tap row staged in the prologue."""
    cols, rows = FEATURES_QUAD_TILE
    s = FEATURES_QUAD_SCALE
    pitch = -(-(cols + kernel_size - 1) // 4) * 4
    channel = s * features_quad_pitches((rows + kernel_size - 1) * pitch)[0]
    tap_row = kernel_size * s * features_quad_pitches(rows * cols)[0]
    return channel, tap_row


def features_quad_plan(
    geometry: Geometry,
    dtype: str,
    kernel: KernelId,
    from_logits: bool,
    operands,
    target: PlanTarget = DEFAULT_TARGET,
) -> Launch | None:
    """grad_features with four input pixels per thread, where it is built and s = 2;
    None elsewhere (the one-pixel kernels take it)."""
    k, s = geometry.kernel_size, geometry.scale_factor
    if s != FEATURES_QUAD_SCALE or not features_quads_instantiated(dtype, k):
        return None
    cols, rows = FEATURES_QUAD_TILE
    centres = (rows + k - 1) * (cols + k - 1)
    accumulator = ACCUMULATOR_SIZE[dtype]
    staged_plane, tap_row = features_quad_shared(k)
    batch = _channel_batch(staged_plane * accumulator)
    normalisers = 2 * s * s * centres * accumulator  # the fused kernel's, before staging
    if batch == 0 or (from_logits and normalisers > SHARED_MEMORY_LIMIT):
        return None
    shared = max(batch * staged_plane, tap_row) * accumulator
    if from_logits:
        shared = max(shared, normalisers)
    blocks = -(-geometry.width // cols) * -(-geometry.height // rows)
    blocks *= geometry.batch * geometry.group_size
    # sliced by the busiest SM's issue time, prologue and tail round included
    cost = features_cost(ITEMSIZE[dtype], k, quad=True)
    per_group = geometry.channels // geometry.group_size
    traffic = features_launch_bytes(geometry, dtype, cols, rows, quad=True)
    per_block = max(1, sliced_channels_per_block(cost, per_group, blocks, batch, target, traffic))
    block = (TILE_THREADS[0], FEATURES_QUAD_TILE[1], 1)
    return _sliced_launch(geometry, kernel, operands, blocks, per_block, block, shared, batch)


def faster_features_plan(
    geometry: Geometry, dtype: str, one_pixel: Launch | None, quad: Launch | None,
    target: PlanTarget = DEFAULT_TARGET,
) -> Launch | None:
    """The grad_features tiling whose busiest SM issues for less time (ties: the
    four-pixel one). Both give the same bits (they add a pixel's sub-pixel sums
    in one order), so fp16 and bf16 may take another tiling than fp32 does."""
    if one_pixel is None or quad is None:
        return quad or one_pixel

    def cycles(plan: Launch, is_quad: bool, cols: int, rows: int) -> float:
        cost = features_cost(ITEMSIZE[dtype], geometry.kernel_size, is_quad)
        cost = replace(cost, warps=-(-plan.threads_per_block // 32))
        traffic = features_launch_bytes(geometry, dtype, cols, rows, quad=is_quad)
        slices = -(-(geometry.channels // geometry.group_size) // plan.tiling[0])
        return launch_cycles(cost, plan.blocks, plan.tiling[0], target, traffic, slices)

    s = geometry.scale_factor
    one_tile = (one_pixel.block[0] // s, one_pixel.block[1] // s)
    faster = cycles(one_pixel, False, *one_tile) < cycles(quad, True, *FEATURES_QUAD_TILE)
    return one_pixel if faster else quad
