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
    masks_rows_instantiated,
    pairs_instantiated,
)
from .grid_fit import (
    masks_one_row_faster,
)
from .target import DEFAULT_TARGET, PlanTarget
from .types import (
    ACCUMULATOR_SIZE,
    CHANNEL_BATCH_MAX,
    ITEMSIZE,
    MAX_GRID_X,
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


def channel_batch(bytes_per_channel: int, fixed_bytes: int = 0, per_batch_bytes: int = 0) -> int:
    for batch in range(CHANNEL_BATCH_MAX, 0, -1):
        if batch * (bytes_per_channel + per_batch_bytes) + fixed_bytes <= SHARED_MEMORY_LIMIT:
            return batch
    return 0


def target_channels_per_block(
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
    batch = channel_batch(halo_bytes)
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
    return sliced_launch(geometry, kernel, operands, blocks, per_block, block, shared, batch)


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


def sliced_launch(geometry: Geometry, kernel: KernelId, operands, blocks: int, per_block: int,
                   block: tuple[int, int, int], shared: int, batch: int) -> Launch | None:
    """A launch whose tiles repeat once per slice of per_block channels of a group."""
    slices = max(1, -(-(geometry.channels // geometry.group_size) // per_block))
    if blocks * slices > MAX_GRID_X:
        return None  # the general kernels loop over any size
    grid = (blocks * slices, 1, 1)
    return Launch(kernel.module, kernel.name, grid, block, shared, operands, (per_block, batch))


# grad_features with four input pixels per thread (carafe_tiled_grad_features_quad.cuh):
# s = 2, a warp is one input row of 8 quads times 4 sub-pixels, a block 4 rows.
