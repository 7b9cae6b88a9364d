"""Executed SASS per warp, from the loops' trip counts (``compose.py`` turns it
into time).

Trip counts come from the plan (channels per block, channel batch, block shape)
and the geometry, matched to each SASS loop by the source line of its backward
branch. Where a loop's source line is not one the model knows, the loop counts
once and the estimate names it in ``unknown_loops``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .._plan.features_tiles import FEATURES_QUAD_TILE
from .._plan.planner import (
    FEATURES_SLOTS,
    GENERAL_FEATURES_STRIP,
    GENERAL_FORWARD_STRIP,
    GENERAL_TAP_STRIP,
    TILE_THREADS,
    Geometry,
    Launch,
    general_threads,
    halo_extent,
)
from .static import KernelStatic, Loop


@dataclass(frozen=True)
class Execution:
    """One warp's executed work, from the SASS and the trip counts."""

    instructions: float  # warp-instructions per warp
    load_rounds: float  # dependent global-load rounds per warp
    loops: tuple[tuple[Loop, int, float], ...]  # (loop, trips per entry, entries per warp)
    unknown_loops: tuple[str, ...]


def _pairs(launch: Launch) -> int:
    return launch.kernel_id.columns


def _staged_elements(loop: Loop, launch: Launch, geometry: Geometry) -> int:
    """Elements one pass of a staging loop writes to shared memory."""
    k, s = geometry.kernel_size, geometry.scale_factor
    batch = launch.tiling[1] if len(launch.tiling) > 1 else 1
    if launch.kernel_id.operation in ("grad_features", "fused_grad_features"):
        cols, rows = max(1, TILE_THREADS[0] // s), max(1, TILE_THREADS[1] // s)
        if _pairs(launch) == 4:  # four input pixels a thread: a wider tile
            cols, rows = FEATURES_QUAD_TILE
        plane = (rows + k - 1) * s * (cols + k - 1) * s
        return batch * plane if "channel_batch" in loop.source else plane
    pairs = _pairs(launch)
    pitch = (TILE_THREADS[0] * pairs - 1 + pairs - 1) // pairs + k
    return batch * halo_extent(TILE_THREADS[1], s, k) * pitch


def _euclid_steps(a: int, b: int) -> int:
    steps = 0
    while b:
        a, b, steps = b, a % b, steps + 1
    return steps


def _tap_step(geometry: Geometry) -> int:
    return geometry.stride // math.gcd(geometry.dilation, geometry.stride)


def loop_trips(loop: Loop, launch: Launch, geometry: Geometry) -> int | None:
    """Iterations of ``loop`` each time it is entered; None when the line is unknown."""
    text, k, s = loop.source, geometry.kernel_size, geometry.scale_factor
    per_block, batch = launch.tiling if len(launch.tiling) == 2 else (geometry.channels, 1)
    if "c0 + CARAFE_CHANNEL_BATCH_MAX <= channel_count" in text:  # whole batches only
        return per_block // batch
    if "c0 < unmasked;" in text or "c0 = unmasked;" in text:
        # grad_masks 2 x 2: whole batches of the channels every subset holds,
        # then the rest, masked (TILE_THREADS[1] subsets of per_block channels)
        per_group = geometry.channels // geometry.group_size
        common = max(0, min(per_block, per_group - (TILE_THREADS[1] - 1) * per_block))
        unmasked = common - common % batch
        if "c0 < unmasked;" in text:
            return unmasked // batch
        return -(-(per_block - unmasked) // batch)
    if "c0 += channel_batch" in text:
        return -(-per_block // batch)
    if "cc < tail_count" in text:  # the partial batch after the whole ones
        return per_block % batch
    if "cc < channel_batch" in text:
        return batch
    if "pass < passes" in text:  # grad_features staging past the first pass (large s)
        rows, cols = (launch.block[1] // s + k - 1) * s, (launch.block[0] // s + k - 1) * s
        return -(-rows * cols // (FEATURES_SLOTS * launch.threads_per_block)) - 1
    if "cc += s * s" in text:  # channels shared out over a pixel's s * s threads
        return -(-batch // (s * s))
    if "cc < count" in text:
        return batch
    if "e += threads" in text:
        passes = -(-_staged_elements(loop, launch, geometry) // launch.threads_per_block)
        return -(-passes // max(1, loop.shared_stores))  # unrolled: one store per element
    if "grid_stride()" in text:
        threads = launch.blocks * launch.threads_per_block
        return -(-general_threads(launch.kernel_id, geometry) // threads)
    if "= first_i;" in text or "= first_j;" in text:
        # the general grad_features visits every tap_step-th tap (t / gcd(d, t))
        return -(-k // _tap_step(geometry))
    if "while (b != 0)" in text:  # Euclid's gcd(d, t), once per thread
        return _euclid_steps(geometry.dilation, geometry.stride)
    if "tap < walk.tap_step" in text:  # finding the first of them: about half a step
        return min(k, -(-_tap_step(geometry) // 2))
    if "< FORWARD_CHANNEL_STRIP;" in text:  # not unrolled: the strip's channels
        return GENERAL_FORWARD_STRIP
    if "< GRAD_FEATURES_CHANNEL_STRIP;" in text:
        return GENERAL_FEATURES_STRIP
    if "= 1; a < s;" in text or "= 1; b < s;" in text:  # after the first of s
        return s - 1
    if "< s;" in text:
        return s
    if "< TAPS" in text:
        return k * k
    if "< K;" in text or "kernel_size;" in text:
        return k
    if "< PAIR" in text:
        return _pairs(launch)
    if "channels_per_group" in text:
        # the general grad_masks: a grad_output load and a strip of feature loads a
        # channel, so an unrolled copy of the loop covers that many fewer channels a trip
        unrolled = max(1, loop.global_loads // (1 + GENERAL_TAP_STRIP))
        return -(-(geometry.channels // geometry.group_size) // unrolled)
    return None


def execution(
    static: KernelStatic,
    launch: Launch | None,
    geometry: Geometry | None,
    trips_of: Callable[[Loop], int | None] | None = None,
) -> Execution:
    """Warp-instructions and dependent load rounds one warp executes. Trip counts
    come from ``trips_of(loop)`` where given (a kernel outside the project's), else
    from the plan and geometry (``loop_trips``)."""
    loops = static.loops
    # Of several SASS loops for one source loop under one parent (versions of
    # the loop for different cases), only the largest is counted.
    counted = set()
    for index, loop in enumerate(loops):
        rivals = [
            other for other, candidate in enumerate(loops)
            if candidate.line == loop.line and candidate.parent == loop.parent
        ]
        if index == max(rivals, key=lambda other: loops[other].instructions):
            counted.add(index)
    unknown = []
    trips = {}
    for index, loop in enumerate(loops):
        found = trips_of(loop) if trips_of else loop_trips(loop, launch, geometry)
        if found is None:
            unknown.append(f"line {loop.line}: {loop.source}")
            found = 1
        trips[index] = found

    def entries(index: int) -> float:
        """How often the loop is entered per warp: its ancestors' trips multiplied."""
        parent = loops[index].parent
        if parent is None:
            return 1.0
        return 0.0 if parent not in counted else entries(parent) * trips[parent]

    instructions = float(static.straight_line_instructions)
    rounds = float(static.straight_line_load_rounds)
    rows = []
    for index, loop in enumerate(loops):
        executions = entries(index) * trips[index] if index in counted else 0.0
        instructions += loop.own_instructions * executions
        rounds += loop.load_rounds * executions
        rows.append((loop, trips[index], entries(index) if index in counted else 0.0))
    return Execution(instructions, rounds, tuple(rows), tuple(unknown))


def forward_prologue_batches(arch: str) -> float:
    """The tiled forward's prologue in channel batches for ``arch``: the k = 5
    float32 kernel with 2 x 2 pixels a thread, its straight-line SASS over one
    pass of its loop over whole channel batches (whose body sums all 4 channels),
    which the planner's ``FORWARD_PROLOGUE_BATCHES`` table holds per architecture."""
    from .._kernels.names import KernelId
    from .static import module_static

    kernel_id = KernelId("forward", "float32", 5, 4)
    kernel = module_static(kernel_id.module, arch)[kernel_id.name]
    (batches,) = [loop for loop in kernel.loops if "<= channel_count" in loop.source]
    return kernel.straight_line_instructions / batches.own_instructions
