"""Records and summaries of the cost model for shapes, dtypes and GPUs."""

from __future__ import annotations

from dataclasses import dataclass

from .._plan.planner import Geometry
from . import host, model, static, traffic
from .hardware import GpuModel
from .shape_sets import unfold_floor_bytes, unfold_peak_bytes

FORWARD_OPS = ("forward", "fused_forward")
OPS = ("forward", "backward", "fused_forward", "fused_backward")
OP_ROLES = {
    "forward": ("features", "masks", "output"),
    "backward": ("grad_output", "features", "masks", "grad_features", "grad_masks"),
}


@dataclass(frozen=True)
class Problem:
    geometry: Geometry
    dtype: str
    detailed: bool = False  # name k, G, s, stride and dilation in the shape label

    @property
    def shape(self) -> str:
        g = self.geometry
        label = f"{g.batch},{g.channels},{g.height},{g.width}"
        if self.detailed:
            label += f" k{g.kernel_size} G{g.group_size} s{g.scale_factor} t{g.stride}"
            label += f" d{g.dilation}"
        return label


def op_floor_bytes(op: str, problem: Problem) -> int:
    """Compulsory bytes of the CARAFE op itself: each tensor read or written once."""
    return sum(traffic.tensor_bytes(r, problem.geometry, problem.dtype) for r in OP_ROLES[op])


def _ops(problem: Problem) -> tuple[str, ...]:
    from .._plan.planner import fused_supported

    if fused_supported(problem.geometry, problem.dtype):
        return OPS
    return ("forward", "backward")


def simulate_problem(problem: Problem, max_blocks: int | None) -> dict:
    """Simulated traffic of every launch of every op (GPU-independent)."""
    measured = {}
    for op in _ops(problem):
        for launch in traffic.planned(op, problem.geometry, problem.dtype):
            measured[(op, launch.kernel)] = traffic.simulate(
                op, launch, problem.geometry, problem.dtype, max_blocks
            )
    return measured


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator else 0.0


def records_for(problem: Problem, gpu: GpuModel, measured: dict) -> list[dict]:
    """One record per kernel launch of every op, as the launcher plans it."""
    rows = []
    g = problem.geometry
    for op in _ops(problem):
        for launch in traffic.planned(op, g, problem.dtype):
            kernel_static = static.module_static(launch.module, gpu.arch)[launch.kernel]
            work = model.execution(kernel_static, launch, g)
            moved = measured.get((op, launch.kernel))
            compulsory = traffic.compulsory_bytes(op, launch, g, problem.dtype)
            est = model.estimate(
                gpu, kernel_static, work, launch, compulsory, moved.sectors if moved else None
            )
            rows.append(
                {
                    "kernel": launch.kernel,
                    "shape": problem.shape,
                    "dtype": problem.dtype,
                    "gpu": gpu.key,
                    "registers": kernel_static.resources.registers,
                    "occupancy": est.occupancy.as_dict(),
                    "sass_instructions": {
                        "static": kernel_static.instructions,
                        "straight_line": kernel_static.straight_line_instructions,
                        "loops": [
                            {
                                "line": loop.line,
                                "source": loop.source,
                                "instructions": loop.own_instructions,
                                "trips": trips,
                                "entries_per_warp": entries,
                            }
                            for loop, trips, entries in work.loops
                        ],
                        "per_warp": round(work.instructions),
                        "warp_instructions": round(est.warp_instructions),
                        "unknown_loops": list(work.unknown_loops),
                    },
                    "global_bytes": {
                        "load": round(moved.load_bytes) if moved else None,
                        "store": round(moved.store_bytes) if moved else None,
                        "compulsory": compulsory,
                    },
                    "sectors_per_request": {
                        "load": _ratio(moved.load_sectors, moved.load_requests) if moved else None,
                        "store": _ratio(moved.store_sectors, moved.store_requests)
                        if moved
                        else None,
                    },
                    "bank_conflicts": {
                        "per_request": _ratio(moved.bank_conflicts, moved.shared_requests)
                        if moved
                        else None,
                        "total": round(moved.bank_conflicts) if moved else None,
                    },
                    "blocks": launch.blocks,
                    "waves": round(est.waves, 3),
                    "est_us": round(est.est_us, 3),
                    "floor_us": round(est.floor_us, 3),
                    "pct_of_floor": round(100 * est.floor_us / est.est_us, 1),
                    # not in JSON: kept for the markdown table
                    "_op": op,
                    "_bound": est.bound,
                    "_terms": {
                        "dram": est.dram_us, "l2": est.l2_us, "issue": est.issue_us,
                        "latency": est.latency_us,
                    },
                    "_simulated": moved.simulated if moved else "not simulated",
                    "_exact": moved.exact if moved else False,
                }
            )
    return rows


def summary_for(problem: Problem, gpu: GpuModel, rows: list[dict], host_us) -> dict:
    """The unfused op's % of its HBM floor, forward and forward+backward."""
    bandwidth = gpu.hbm_gb_per_s * 1e3  # bytes per µs
    forward_floor = op_floor_bytes("forward", problem) / bandwidth
    backward_floor = op_floor_bytes("backward", problem) / bandwidth
    forward_us = sum(r["est_us"] for r in rows if r["_op"] == "forward")
    backward_us = sum(r["est_us"] for r in rows if r["_op"] == "backward")
    itemsize = traffic.ITEMSIZE[problem.dtype]
    unfold_forward, unfold_fwd_bwd = unfold_floor_bytes(problem.geometry, itemsize)
    return {
        "shape": problem.shape,
        "dtype": problem.dtype,
        "gpu": gpu.key,
        "forward_pct_of_floor": round(100 * forward_floor / forward_us, 1),
        "fwd_bwd_pct_of_floor": round(
            100 * (forward_floor + backward_floor) / (forward_us + backward_us), 1
        ),
        "host_forward_us": round(host_us[0], 1),
        "host_backward_us": round(host_us[1], 1),
        "forward_est_us": round(forward_us, 1),
        "fwd_bwd_est_us": round(forward_us + backward_us, 1),
        "unfold_forward_floor_us": round(unfold_forward / bandwidth, 1),
        "unfold_fwd_bwd_floor_us": round(unfold_fwd_bwd / bandwidth, 1),
        "unfold_extra_mb": round(unfold_peak_bytes(problem.geometry, itemsize) / 1e6, 1),
    }


def profile(problems: list[Problem], gpus: list[GpuModel], max_blocks: int | None):
    """(records, summary) for every problem on every GPU."""
    records, summary = [], []
    for problem in problems:
        measured = simulate_problem(problem, max_blocks)
        host_us = host.host_overhead_us(problem.geometry, problem.dtype)
        for gpu in gpus:
            rows = records_for(problem, gpu, measured)
            records += rows
            summary.append(summary_for(problem, gpu, rows, host_us))
    return records, summary
