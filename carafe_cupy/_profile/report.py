"""Records and summaries of the cost model for shapes, dtypes and GPUs."""

from __future__ import annotations

from dataclasses import dataclass

from .._plan.planner import Geometry, PlanTarget
from . import compose, host, model, static, traffic
from .hardware import CUPY_LAUNCH_US, GpuModel
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


def plan_target(gpu: GpuModel) -> PlanTarget:
    """The planner's view of the modelled GPU: its SM count and architecture."""
    return PlanTarget(gpu.sms, gpu.arch)


def simulate_problem(problem: Problem, max_blocks: int | None, gpus: list[GpuModel]) -> dict:
    """Simulated traffic of every launch of every op, per distinct launch (the GPUs'
    plans may differ in their channel slices)."""
    measured = {}
    for gpu in gpus:
        for op in _ops(problem):
            for launch in traffic.planned(op, problem.geometry, problem.dtype, plan_target(gpu)):
                if (op, launch) not in measured:
                    measured[(op, launch)] = traffic.simulate(
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
        for launch in traffic.planned(op, g, problem.dtype, plan_target(gpu)):
            kernel_static = static.module_static(launch.module, gpu.arch)[launch.kernel]
            work = model.execution(kernel_static, launch, g)
            moved = measured.get((op, launch))
            compulsory = traffic.compulsory_bytes(op, launch, g, problem.dtype)
            memory = memory_of(moved, compulsory,
                               traffic.compulsory_bytes(op, launch, g, problem.dtype, True))
            est = compose.estimate(gpu, kernel_static, work, launch, memory)
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
                    "busiest_sm_rounds": list(est.rounds),
                    "est_us": round(est.est_us, 3),
                    "est_in_phase_us": round(est.est_in_phase_us, 3),
                    "dram_us": round(est.dram_us, 3),
                    "l2_us": None if est.l2_us is None else round(est.l2_us, 3),
                    "shared_us": round(est.shared_us, 3),
                    "data_path_us": round(est.data_path_us, 3),
                    "issue_us": round(est.issue_us, 3),
                    "latency_us": round(est.latency_us, 3),
                    "sm_us": round(est.sm_us, 3),
                    "issue_efficiency": round(est.issue_efficiency, 3),
                    "bound": est.bound,
                    "floor_us": round(est.floor_us, 3),
                    "floor_achievable_us": round(est.floor_achievable_us, 3),
                    "pct_of_floor": round(100 * est.floor_us / est.est_us, 1),
                    "pct_of_achievable_floor": round(
                        100 * est.floor_achievable_us / est.est_us, 1
                    ),
                    # not in JSON: kept for the markdown table and the calibration
                    "_op": op,
                    "_bound": est.bound,
                    "_terms": est.terms(),
                    "_simulated": moved.simulated if moved else "not simulated",
                    "_exact": moved.exact if moved else False,
                }
            )
    return rows


def memory_of(moved, compulsory: int, compulsory_loads: int) -> compose.Memory:
    """The tracer's counts as the composed model takes them (defaults without)."""
    if moved is None:
        return compose.Memory(compulsory)
    factor = traffic.Traffic.conflict_factor
    return compose.Memory(
        compulsory_bytes=compulsory,
        sectors=moved.sectors,
        load_sectors_per_request=_ratio(moved.load_sectors, moved.load_requests) or 4.0,
        store_sectors_per_request=_ratio(moved.store_sectors, moved.store_requests) or 4.0,
        shared_load_factor=factor(*moved.shared_load),
        shared_store_factor=factor(*moved.shared_store),
        dram_share_of_loads=min(1.0, compulsory_loads / moved.load_bytes)
        if moved.load_bytes else 1.0,
    )


def summary_for(problem: Problem, gpu: GpuModel, rows: list[dict], times: host.HostTimes) -> dict:
    """The unfused op's % of its DRAM floor (nominal and achievable bandwidth),
    forward and forward+backward, and its host time per call."""
    bandwidth = gpu.hbm_gb_per_s * 1e3  # bytes per µs
    forward_floor = op_floor_bytes("forward", problem) / bandwidth
    backward_floor = op_floor_bytes("backward", problem) / bandwidth
    forward_us = sum(r["est_us"] for r in rows if r["_op"] == "forward")
    backward_us = sum(r["est_us"] for r in rows if r["_op"] == "backward")
    fwd_bwd_us = forward_us + backward_us
    itemsize = traffic.ITEMSIZE[problem.dtype]
    unfold_forward, unfold_fwd_bwd = unfold_floor_bytes(problem.geometry, itemsize)
    share = gpu.achievable_dram_share
    host_forward = times.torch_forward + times.launches_forward * CUPY_LAUNCH_US
    host_fwd_bwd = times.torch_forward_backward + (
        times.launches_forward + times.launches_backward
    ) * CUPY_LAUNCH_US
    return {
        "shape": problem.shape,
        "dtype": problem.dtype,
        "gpu": gpu.key,
        "forward_pct_of_floor": round(100 * forward_floor / forward_us, 1),
        "fwd_bwd_pct_of_floor": round(100 * (forward_floor + backward_floor) / fwd_bwd_us, 1),
        "forward_pct_of_achievable_floor": round(100 * forward_floor / share / forward_us, 1),
        "fwd_bwd_pct_of_achievable_floor": round(
            100 * (forward_floor + backward_floor) / share / fwd_bwd_us, 1
        ),
        "forward_est_us": round(forward_us, 1),
        "fwd_bwd_est_us": round(fwd_bwd_us, 1),
        "host_torch_forward_us": round(times.torch_forward, 1),
        "host_torch_fwd_bwd_us": round(times.torch_forward_backward, 1),
        "host_array_forward_us": round(times.array_forward, 1),
        "cupy_launch_us_assumed": CUPY_LAUNCH_US,
        "host_forward_us": round(host_forward, 1),
        "host_fwd_bwd_us": round(host_fwd_bwd, 1),
        "forward_bound": "host" if host_forward > forward_us else "gpu",
        "fwd_bwd_bound": "host" if host_fwd_bwd > fwd_bwd_us else "gpu",
        "unfold_forward_floor_us": round(unfold_forward / bandwidth, 1),
        "unfold_fwd_bwd_floor_us": round(unfold_fwd_bwd / bandwidth, 1),
        "unfold_extra_mb": round(unfold_peak_bytes(problem.geometry, itemsize) / 1e6, 1),
    }


def profile(problems: list[Problem], gpus: list[GpuModel], max_blocks: int | None):
    """(records, summary) for every problem on every GPU."""
    records, summary = [], []
    for problem in problems:
        measured = simulate_problem(problem, max_blocks, gpus)
        times = host.host_times(problem.geometry, problem.dtype)
        for gpu in gpus:
            rows = records_for(problem, gpu, measured)
            records += rows
            summary.append(summary_for(problem, gpu, rows, times))
    return records, summary
