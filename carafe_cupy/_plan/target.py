"""The GPU a plan deals its blocks to. Pure data: the launcher passes the
device's SM count and architecture, the cost model those of the GPU it models,
and planning without a device (the simulator, tests) assumes an H100 SXM.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SMS = 132  # H100 SXM, the GPU the kernels are tuned on
DEFAULT_ARCH = "sm_90"

# The tiled forward's prologue (block position, masks into registers, tap tests,
# halo slots) in units of one staged channel batch, per architecture: the k = 5
# float32 kernel with 2 x 2 pixels a thread, its straight-line SASS instructions
# over one pass of its loop over whole batches of 4 channels.
# tests/test_plan_target.py recomputes them from NVRTC's output for each arch.
FORWARD_PROLOGUE_BATCHES = {"sm_75": 1.395, "sm_80": 1.396, "sm_90": 1.255}

# Resident blocks per SM of the tiled kernels (256 threads, 96-128 registers):
# two on every architecture the kernels target (the cost model's occupancy).
# (The forward with 2 x 2 pixels a thread holds three of its 4-warp blocks; its
# slices are planned for this full wave too: 8 of its warps on every SM.)
TILED_BLOCKS_PER_SM = 2


@dataclass(frozen=True)
class PlanTarget:
    """SM count and architecture of the GPU planned for."""

    sms: int = DEFAULT_SMS
    arch: str = DEFAULT_ARCH

    def __post_init__(self) -> None:
        if not isinstance(self.sms, int) or self.sms < 1:
            raise ValueError(f"PlanTarget: sms must be a positive int, got {self.sms!r}")

    @property
    def prologue_batches(self) -> float:
        """The forward's prologue in channel batches; architectures after those
        measured take the newest one's figure."""
        known = FORWARD_PROLOGUE_BATCHES.get(self.arch)
        return FORWARD_PROLOGUE_BATCHES[DEFAULT_ARCH] if known is None else known

    @property
    def full_wave_blocks(self) -> int:
        """Blocks that fill every SM once with the tiled kernels' resident blocks."""
        return TILED_BLOCKS_PER_SM * self.sms

    @property
    def features_target_blocks(self) -> int:
        """grad_features grids aim at two full waves."""
        return 2 * self.full_wave_blocks


DEFAULT_TARGET = PlanTarget()
