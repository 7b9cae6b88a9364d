"""Resident blocks and warps per SM, and the resource that limits them, by the
rules of CUDA's occupancy calculator (``cuda_occupancy.h``)."""

from __future__ import annotations

from dataclasses import dataclass

from .hardware import (
    REGISTER_ALLOCATION_UNIT,
    SHARED_ALLOCATION_UNIT,
    SUB_PARTITIONS,
    WARP_SIZE,
    GpuModel,
)


@dataclass(frozen=True)
class Occupancy:
    blocks_per_sm: int
    warps_per_sm: int
    fraction: float  # resident warps / the SM's maximum
    limited_by: str  # "warps", "blocks", "registers" or "shared memory"

    def as_dict(self) -> dict:
        return {
            "blocks_per_sm": self.blocks_per_sm,
            "warps_per_sm": self.warps_per_sm,
            "fraction": round(self.fraction, 4),
            "limited_by": self.limited_by,
        }


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def occupancy(
    gpu: GpuModel, threads_per_block: int, registers: int, shared_per_block: int
) -> Occupancy:
    """Blocks per SM for a kernel of ``registers`` per thread and ``shared_per_block``
    bytes (static + dynamic) launched with ``threads_per_block`` threads."""
    if threads_per_block < 1:
        raise ValueError(f"threads_per_block must be positive, got {threads_per_block}")
    warps_per_block = -(-threads_per_block // WARP_SIZE)
    limits = {
        "warps": gpu.max_warps_per_sm // warps_per_block,
        "blocks": gpu.max_blocks_per_sm,
    }
    if registers > 0:
        registers_per_warp = _round_up(registers * WARP_SIZE, REGISTER_ALLOCATION_UNIT)
        # registers are allocated per sub-partition: a warp lives in one of four
        warps_per_partition = (gpu.registers_per_sm // SUB_PARTITIONS) // registers_per_warp
        limits["registers"] = (warps_per_partition * SUB_PARTITIONS) // warps_per_block
    if shared_per_block > gpu.shared_per_block_max:
        limits["shared memory"] = 0
    else:
        per_block = _round_up(
            shared_per_block + gpu.shared_reserved_per_block, SHARED_ALLOCATION_UNIT
        )
        if per_block > 0:
            limits["shared memory"] = gpu.shared_per_sm // per_block
    # the first of the tied limits, in the order above, is named
    limited_by = min(limits, key=lambda name: limits[name])
    blocks = limits[limited_by]
    warps = blocks * warps_per_block
    return Occupancy(blocks, warps, warps / gpu.max_warps_per_sm, limited_by)
