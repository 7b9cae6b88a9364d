"""Grid fit: how long a channel-sliced launch keeps its busiest SM busy, in
warp-instruction issue cycles, so the planner can compare tilings and slice
counts of one kernel, and kernels of one operation, at the shape at hand.
Pure Python, used only by the planner (``_plan.tiles``).

The estimate follows the cost model's composition (``_profile/compose.py``) at
its coarsest: blocks go round-robin to the target's SMs, so the busiest SM is
dealt ceil(blocks / SMs) of them and runs them in rounds of its resident
blocks, a partial tail round last. A round issues its blocks' warp-instructions
at the kernel's issue efficiency, less for a partial round: a lone tail block,
or one block where three fit, leaves the schedulers waiting on its latencies
(PARTIAL_ROUND_EXPONENT). A block's instructions are its prologue plus its
channels times the per-channel cost. Or L2 holds the launch back, when every
slice re-reads its tiles' masks (``launch_cycles``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .target import DEFAULT_TARGET, PlanTarget
from .types import ITEMSIZE, Geometry


@dataclass(frozen=True)
class KernelCost:
    """One kernel's per-warp SASS at the shape class it runs (k = 5, s = 2).

    prologue: straight-line instructions a warp runs once per block (masks into
    registers, tile position, staging slots); per_channel: instructions per
    staged channel (staging, the tap loop, the reduction and store, and the
    batch loop's share); warps: warps per block; resident: blocks per SM (the
    launch bounds' minimum, which ptxas meets); issue_efficiency: warp-
    instructions per clock per scheduler with every resident block running."""

    prologue: float
    per_channel: float
    warps: int
    resident: int
    issue_efficiency: float

    def block_instructions(self, channels: int) -> float:
        """Warp-instructions one block issues for ``channels`` channels."""
        return self.warps * (self.prologue + channels * self.per_channel)


SCHEDULERS_PER_SM = 4
# L2 bytes per SM clock, per SM: the cost model's H100 figure (A100's published
# 5120 B/clk over 108 SMs, halved for H100's partitioned L2; _profile/hardware.py).
L2_BYTES_PER_CLOCK_PER_SM = 5120 / 108 / 2
# Bytes through L2 per byte the kernels use: their loads fetch 7-9 sectors per
# request where 4 would do (the cost model's traces); 2.33 matches the cost
# model's L2 time of the four-pixel grad_features at 64 x 64 and 104 x 168.
L2_SECTOR_OVERHEAD = 2.33


@dataclass(frozen=True)
class LaunchBytes:
    """Bytes a sliced launch moves through L2: ``per_slice`` for each channel
    slice (every slice re-reads its tiles' masks) and ``once`` in all (the
    grad_output halos and the results, split among the slices);
    ``sector_overhead``: sectors fetched over the sectors these bytes fill."""

    per_slice: float = 0.0
    once: float = 0.0
    sector_overhead: float = L2_SECTOR_OVERHEAD

    def total(self, slices: int) -> float:
        return self.per_slice * slices + self.once


def launch_cycles(
    cost: KernelCost,
    blocks: int,
    channels_per_block: int,
    target: PlanTarget = DEFAULT_TARGET,
    traffic: LaunchBytes = LaunchBytes(),
    slices: int = 1,
) -> float:
    """SM clocks of the launch: the busiest SM's issue time, or the L2's time
    for the launch's bytes, whichever is longer (more channel slices fill the
    grid but re-read more masks)."""
    bytes_moved = traffic.total(slices) * traffic.sector_overhead
    l2 = bytes_moved / (L2_BYTES_PER_CLOCK_PER_SM * target.sms)
    return max(busiest_sm_cycles(cost, blocks, channels_per_block, target), l2)


def busiest_sm_cycles(
    cost: KernelCost, blocks: int, channels_per_block: int, target: PlanTarget = DEFAULT_TARGET
) -> float:
    """Issue cycles of the SM dealt the most blocks (see the module docstring)."""
    if blocks <= 0:
        return 0.0
    dealt = -(-blocks // target.sms)
    full_rounds, tail = divmod(dealt, cost.resident)
    per_block = cost.block_instructions(channels_per_block)
    full_rate = SCHEDULERS_PER_SM * cost.issue_efficiency
    cycles = full_rounds * cost.resident * per_block / full_rate
    if tail:
        # a partial round issues at its share of the resident blocks' rate, to
        # the power PARTIAL_ROUND_EXPONENT
        share = (tail / cost.resident) ** PARTIAL_ROUND_EXPONENT
        cycles += tail * per_block / (full_rate * share)
    return cycles


# A partial round of r of R resident blocks issues at (r / R) ** 0.85 of the full
# rate: the cost model's lone four-pixel grad_features block (one of three, 13 x 21)
# runs at IPC / 4 0.24 against 0.62 with all three, (1 / 3) ** 0.85 = 0.39.
PARTIAL_ROUND_EXPONENT = 0.85


def sliced_channels_per_block(
    cost: KernelCost,
    per_group: int,
    blocks_per_slice: int,
    batch: int,
    target: PlanTarget = DEFAULT_TARGET,
    traffic: LaunchBytes = LaunchBytes(),
    smallest: int = 16,
) -> int:
    """Channels per block of a channel-sliced grid: whole channel batches (the
    last slice may be shorter), at least ``smallest`` channels a slice (or the
    whole group), picked to minimise ``launch_cycles``; ties go to fewer
    slices (each re-reads its tile's masks)."""
    if per_group <= smallest:
        return per_group
    candidates = {min(per_group, n * batch) for n in range(1, -(-per_group // batch) + 1)}
    candidates = {n for n in candidates if n >= smallest} or {per_group}

    def cycles(per_block: int) -> tuple[float, int]:
        slices = -(-per_group // per_block)
        blocks = blocks_per_slice * slices
        return launch_cycles(cost, blocks, per_block, target, traffic, slices), slices

    return min(candidates, key=cycles)


# grad_features' two tilings at k = 5, s = 2 on sm_90, from the cost model's SASS
# loop table (python -m carafe_cupy profile --shapes fpn --gpu h100, and with
# --dtype float16; benchmarks/results/2026-12-08-model-h100-grid-fit/): the
# straight-line count, and the channel loop's body per channel (the batch loop's
# own body over its 4 channels, plus the tap loop and the reduction), and the
# IPC / 4 each reaches with all its resident blocks (0.56-0.67 fp32, 0.54-0.63
# the one-pixel fp16; the four-pixel fp16 / bf16 kernel, two blocks of 4 warps,
# 0.32). Keyed by the storage width: fp16 and bf16 convert on staging and on
# the store. The one-pixel fp16 takes 0.63, its figure at 52 x 84 and 64 x 64,
# where the four-pixel kernel comes within a few per cent of it: with 0.60 this
# estimate put it 5% above the cost model's time there (79.2 and 59.7 against
# 75.2 and 56.3 µs) and picked the four-pixel kernel, which the model gives 78.1
# and 58.6 (80.0 at 52 x 84 after the mask staging was unrolled).
_FEATURES_ONE_PIXEL = {
    4: KernelCost(1054, 129.0, 8, 2, 0.62),
    2: KernelCost(1079, 130.0, 8, 2, 0.63),
}
# The four-pixel kernel (benchmarks/results/2026-12-08-grad-features/): its
# prologue is the straight-line code, the mask staging unrolled in it (fp32 1825,
# fp16 1926); a channel is the tap loop (133, fp16 134) and the staging (66, fp16
# unrolled over the batch 501 / 4 with the batch loop) plus the batch loop's share
# (35 / 4); IPC / 4 0.58 at 52 x 84 (0.56-0.60 over the levels), fp16 0.31.
_FEATURES_QUAD = {
    4: KernelCost(1825, 208.0, 4, 3, 0.58),
    2: KernelCost(1926, 259.0, 4, 2, 0.31),
}


def features_cost(itemsize: int, kernel_size: int, quad: bool) -> KernelCost:
    """The grad_features tiling's cost at this storage width and kernel size:
    the k = 5 figures with the tap work scaled by k² / 25 (k = 3: a third of the
    taps, and four blocks per SM for the four-pixel kernel, as its launch
    bounds ask; fp64 and k = 7 one block per SM)."""
    table = _FEATURES_QUAD if quad else _FEATURES_ONE_PIXEL
    cost = table[2 if itemsize == 2 else 4]
    if kernel_size == 5 and itemsize in (2, 4):
        return cost
    taps = kernel_size * kernel_size / 25
    if quad:
        resident = 4 if kernel_size <= 3 else cost.resident
    else:
        resident = 2 if kernel_size <= 5 and itemsize <= 4 else 1
    return KernelCost(
        cost.prologue * taps, cost.per_channel * taps, cost.warps, resident, cost.issue_efficiency
    )


def features_launch_bytes(
    geometry: Geometry, dtype: str, cols: int, rows: int, quad: bool = False
) -> LaunchBytes:
    """What a grad_features launch of cols x rows input-pixel tiles moves through
    L2: every pixel's k² s² masks once a slice, the tiles' grad_output halos
    (their parts inside the image) and the results once. The one-pixel kernel's
    mask loads are s pixels apart, so they fetch about MASK_SECTOR_SHARE times
    the sectors of the contiguous halo rows (the cost model's L2 time at 104 x 168
    with 2 and with 5 slices gives 1.7); the four-pixel kernel loads masks and
    halo rows by consecutive columns (QUAD_SECTOR_OVERHEAD)."""
    k, s, size = geometry.kernel_size, geometry.scale_factor, ITEMSIZE[dtype]
    images = geometry.batch * geometry.group_size
    pixels = geometry.height * geometry.width
    masks = images * pixels * k * k * s * s * size * (1.0 if quad else MASK_SECTOR_SHARE)
    halo = _halo_inside(geometry.width, cols, k) * _halo_inside(geometry.height, rows, k) * s * s
    once = geometry.batch * geometry.channels * (halo + pixels) * size
    if quad:
        return LaunchBytes(masks, once, QUAD_SECTOR_OVERHEAD)
    return LaunchBytes(masks, once)


def _halo_inside(size: int, tile: int, k: int) -> int:
    """Input positions the halos of a row (or column) of tiles cover inside the
    image: each tile's [start - (k - 1 - R), start + tile + R), clipped."""
    radius = (k - 1) // 2
    return sum(
        min(size, start + tile + radius) - max(0, start - (k - 1 - radius))
        for start in range(0, size, tile)
    )


MASK_SECTOR_SHARE = 1.75
# The four-pixel kernel's sectors over the bytes above: its halo rows start 4
# columns before a 64-column boundary (5 sectors where 4 would hold a warp's
# row) and a tap row's mask rows are shifted as much; the cost model's L2 bytes
# over these at 26 x 42, 52 x 84, 104 x 168 and 64 x 64 (13, 5, 2, 5 slices) are
# 1.24-1.30.
QUAD_SECTOR_OVERHEAD = 1.3


# grad_masks' two 2 x 2 forms at k = 5, s = 2 on sm_90 (fp32; the cost model's SASS
# loop table, benchmarks/results/2026-12-08-grad-masks/): every kernel row a block
# (239 registers, one block an SM, batches of four channels) or one kernel row a
# block (_r1: 94 registers, two an SM, a fifth of the taps, the halo one input row,
# batches of two). Per channel: the unmasked channel loop's body over its batch.
# The IPC / 4 is the cost model's with every resident block running: 0.55 (52 x 84,
# one block), 0.65 (the one-row form at 26 x 42). So the one-row form wins only
# where the whole-kernel grid leaves most SMs idle (13 x 21: 26 blocks); at 26 x 42
# its k-fold reads of grad_output and its extra rounds cost more.
_MASKS_WHOLE = KernelCost(1222, 173.25, 8, 1, 0.55)
_MASKS_ROW = KernelCost(664, 61.0, 8, 2, 0.65)


def masks_cost(kernel_size: int, one_row: bool) -> KernelCost:
    """The 2 x 2 grad_masks form's cost: the one-row form's (built for k = 5), or the
    whole kernel's k = 5 figures with the tap work scaled by k² / 25."""
    if one_row or kernel_size == 5:
        return _MASKS_ROW if one_row else _MASKS_WHOLE
    taps = kernel_size**2 / 25
    cost = _MASKS_WHOLE
    return KernelCost(
        cost.prologue * taps, cost.per_channel * taps, cost.warps, cost.resident,
        cost.issue_efficiency,
    )


def masks_launch_bytes(geometry: Geometry, dtype: str) -> LaunchBytes:
    """What a 2 x 2 grad_masks launch moves through L2 per kernel-row slice (a
    one-row launch has k): all of grad_output, and the features (their share of
    rows, counted whole: a block's one input row is read by k row blocks)."""
    size = ITEMSIZE[dtype]
    grad_output = geometry.batch * geometry.channels * geometry.out_height * geometry.out_width
    features = geometry.batch * geometry.channels * geometry.height * geometry.width
    masks = geometry.batch * geometry.group_size * geometry.kernel_size**2
    masks *= geometry.out_height * geometry.out_width
    return LaunchBytes((grad_output + features) * size, masks * size)


def masks_one_row_faster(
    geometry: Geometry,
    dtype: str,
    blocks: int,
    per_subset: int,
    target: PlanTarget = DEFAULT_TARGET,
) -> bool:
    """Whether grad_masks' one-kernel-row blocks (k times the blocks, each
    re-reading grad_output) finish sooner than the whole-kernel blocks."""
    k = geometry.kernel_size
    traffic = masks_launch_bytes(geometry, dtype)
    whole = launch_cycles(masks_cost(k, False), blocks, per_subset, target, traffic, 1)
    rows = launch_cycles(masks_cost(k, True), blocks * k, per_subset, target, traffic, k)
    return rows < whole
