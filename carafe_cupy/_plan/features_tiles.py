"""grad_features' launch shapes: the one-pixel kernel's input tiles (s x s threads a
pixel) and the four-pixel kernel's, and the faster of the two by grid_fit. Pure
Python, used only by the planner (``_plan.planner``)."""

from __future__ import annotations

from dataclasses import replace

from .._kernels.names import KernelId, features_quads_instantiated
from .grid_fit import (
    features_cost,
    features_launch_bytes,
    launch_cycles,
    sliced_channels_per_block,
)
from .target import DEFAULT_TARGET, PlanTarget
from .tiles import channel_batch, sliced_launch, target_channels_per_block
from .types import (
    ACCUMULATOR_SIZE,
    ITEMSIZE,
    MAX_TILED_BACKWARD_SCALE,
    SHARED_MEMORY_LIMIT,
    TILE_THREADS,
    Geometry,
    Launch,
)


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
    batch = channel_batch(staged_plane * accumulator, per_batch_bytes=partial_pitch * accumulator)
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
        per_block = max(1, target_channels_per_block(geometry, blocks, target))
        launch = sliced_launch(geometry, kernel, operands, blocks, per_block, block, shared, batch)
        return None if launch is None else (launch, 0.0)
    # sliced by the launch's time (grid_fit), as the four-pixel kernel
    cost = replace(features_cost(ITEMSIZE[dtype], k, quad=False), warps=-(-threads // 32))
    traffic = features_launch_bytes(geometry, dtype, tile_cols, tile_rows)
    per_block = max(1, sliced_channels_per_block(cost, per_group, blocks, batch, target, traffic))
    launch = sliced_launch(geometry, kernel, operands, blocks, per_block, block, shared, batch)
    if launch is None:
        return None
    slices = -(-per_group // per_block)
    return launch, launch_cycles(cost, launch.blocks, per_block, target, traffic, slices)


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
    batch = channel_batch(staged_plane * accumulator)
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
    return sliced_launch(geometry, kernel, operands, blocks, per_block, block, shared, batch)


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
