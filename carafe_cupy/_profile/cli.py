"""``python -m carafe_cupy profile``: the cost model's table and JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .._kernels.sources import SUPPORTED_DTYPES
from .._plan.planner import Geometry
from . import report
from .hardware import GPUS, gpu
from .shape_sets import FIXED_SETS, FPN_BATCH, FPN_CHANNELS, FPN_LEVELS, fixed_set

PUBLIC_FIELDS = (
    "kernel", "shape", "dtype", "gpu", "registers", "occupancy", "sass_instructions",
    "global_bytes", "sectors_per_request", "bank_conflicts", "blocks", "waves",
    "busiest_sm_rounds", "est_us", "est_in_phase_us", "dram_us", "l2_us", "shared_us",
    "data_path_us", "issue_us", "latency_us", "sm_us", "issue_efficiency", "bound", "floor_us",
    "floor_achievable_us", "pct_of_floor", "pct_of_achievable_floor",
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "profile",
        help="GPU cost model without a GPU: SASS, occupancy, simulated traffic, time",
    )
    parser.add_argument(
        "--shapes", nargs="+", default=["fpn"],
        help="'fpn' (N2 C256 at 13x21, 26x42, 52x84, 104x168, 64x64), N,C,H,W ..., or "
        "'rednet' (involution: k 7, G C/16, stride 1 and 2) and 'carafepp' (CARAFE++ "
        "downsampler: k 5, G 1, stride 2), which carry their own k, G and stride",
    )
    parser.add_argument("--dtype", default="float32", choices=SUPPORTED_DTYPES)
    parser.add_argument("--k", type=int, default=5, help="kernel size (odd)")
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument(
        "--scale", type=int, default=None, help="default 2, or 1 with a --stride above 1"
    )
    parser.add_argument("--stride", type=int, default=1, help="window stride (downsampling)")
    parser.add_argument("--dilation", type=int, default=1)
    parser.add_argument("--gpu", default="h100", help=f"comma list of {', '.join(GPUS)}")
    parser.add_argument("--json", type=Path, help="also write the records and summary here")
    parser.add_argument(
        "--max-blocks", type=int, default=64,
        help="blocks traced per simulated launch (0: all; default %(default)s)",
    )


def parse_shapes(values: list[str]) -> list[tuple[int, int, int, int]]:
    shapes = []
    for value in values:
        if value in FIXED_SETS:
            continue
        if value == "fpn":
            shapes += [(FPN_BATCH, FPN_CHANNELS, h, w) for h, w in FPN_LEVELS]
            continue
        parts = value.split(",")
        if len(parts) != 4 or not all(part.strip().isdigit() for part in parts):
            raise ValueError(
                f"--shapes takes 'fpn', 'rednet', 'carafepp' or N,C,H,W with positive "
                f"integers, got {value!r}"
            )
        shape = tuple(int(part) for part in parts)
        if min(shape) < 1:
            raise ValueError(f"--shapes: every size must be positive, got {value!r}")
        shapes.append(shape)
    return shapes


def problems_from(args: argparse.Namespace) -> list[report.Problem]:
    scale = args.scale if args.scale is not None else (2 if args.stride == 1 else 1)
    if args.k < 1 or args.k % 2 == 0:
        raise ValueError(f"--k must be a positive odd integer, got {args.k}")
    if min(args.groups, scale, args.stride, args.dilation) < 1:
        raise ValueError(
            f"--groups, --scale, --stride and --dilation must be positive, got {args.groups}, "
            f"{scale}, {args.stride}, {args.dilation}"
        )
    if scale > 1 and args.stride > 1:
        raise ValueError(
            f"at most one of --scale and --stride may exceed 1, got {scale}, {args.stride}"
        )
    detailed = args.stride > 1 or args.dilation > 1
    problems = []
    for value in args.shapes:
        if value in FIXED_SETS:
            problems += [report.Problem(g, args.dtype, True) for g in fixed_set(value)]
            continue
        for n, c, h, w in parse_shapes([value]):
            if c % args.groups:
                raise ValueError(
                    f"--groups must divide the channels: {c} channels, {args.groups} groups"
                )
            geometry = Geometry(
                n, c, h, w, args.k, args.groups, scale, args.stride, args.dilation
            )
            problems.append(report.Problem(geometry, args.dtype, detailed))
    return problems


def rounds_text(rounds: list[int]) -> str:
    """Rounds of resident blocks as "2 x 4 + 1" (four rounds of 2, then a lone block)."""
    runs: list[list[int]] = []
    for blocks in rounds:
        if runs and runs[-1][0] == blocks:
            runs[-1][1] += 1
        else:
            runs.append([blocks, 1])
    return " + ".join(f"{blocks} x {count}" if count > 1 else str(blocks) for blocks, count in runs)


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(records: list[dict], summary: list[dict], max_blocks: int | None) -> str:
    """The per-kernel table per (shape, GPU), the summary, and how it was made."""
    lines = [
        "# CARAFE kernels: cost model (a model, not a measurement)",
        "",
        "Static figures from NVRTC (`-Xptxas=-v`) and `nvdisasm -hex` (stall counts and "
        "scoreboards from each instruction's control bits); traffic from the CPU simulator's "
        "memory tracer running the launcher's real plans. est = max(busiest SM, DRAM at the "
        "achievable bandwidth, L2), the busiest SM's time composed from its schedulers, its "
        "shared-memory path and its exposed load latency, round by round (formula: "
        "`carafe_cupy/_profile/compose.py`). Every constant and its source or assumption: "
        "`carafe_cupy/_profile/hardware.py`.",
        "",
    ]
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["shape"], record["dtype"], record["gpu"]), []).append(record)
    for (shape, dtype, key), rows in groups.items():
        lines += [
            f"## N,C,H,W = {shape}, {dtype}, {GPUS[key].name}",
            "",
            "| kernel | regs | blocks/SM (warps, limit) | SASS/warp run | sectors/req ld, st | "
            "bank conflicts/req | blocks | busiest SM rounds | IPC/4 | DRAM µs | L2 µs | "
            "shared µs (with L1) | issue µs | latency µs | est µs (in phase) | bound | "
            "% floor (nominal, achievable) |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: "
            "| ---: | ---: | ---: | --- | ---: |",
        ]
        for r in rows:
            occ, sass, spr = r["occupancy"], r["sass_instructions"], r["sectors_per_request"]
            lines.append(
                f"| {r['kernel']} | {r['registers']} | {occ['blocks_per_sm']} "
                f"({occ['warps_per_sm']}, {occ['limited_by']}) | {sass['per_warp']} | "
                f"{_fmt(spr['load'], 2)}, {_fmt(spr['store'], 2)} | "
                f"{_fmt(r['bank_conflicts']['per_request'], 2)} | {r['blocks']} | "
                f"{rounds_text(r['busiest_sm_rounds'])} | "
                f"{r['issue_efficiency']:.2f} | {r['dram_us']:.1f} | {_fmt(r['l2_us'])} | "
                f"{r['shared_us']:.1f} ({r['data_path_us']:.1f}) | {r['issue_us']:.1f} | "
                f"{r['latency_us']:.1f} | "
                f"{r['est_us']:.1f} ({r['est_in_phase_us']:.1f}) | {r['bound']} | "
                f"{r['pct_of_floor']:.0f}, {r['pct_of_achievable_floor']:.0f} |"
            )
        lines.append("")
    lines += loop_table(records)
    lines += [
        "## Summary (the unfused op: forward = carafe, backward = both gradients)",
        "",
        "% of floor: the op's tensors once at the nominal and at the achievable DRAM "
        "bandwidth. Host: the public call on this machine's CPU with the launch stubbed "
        "(torch forward, torch forward+backward through autograd, the array front end), "
        "and the host total with each launch's assumed CuPy cost added; 'host' marks an op "
        "whose host time exceeds its modelled GPU time.",
        "",
        "| N,C,H,W | dtype | GPU | forward est µs | % floor | fwd+bwd est µs | % floor | "
        "host µs torch fwd, fwd+bwd, array fwd | host µs with launches fwd, fwd+bwd | "
        "bound fwd, fwd+bwd |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in summary:
        lines.append(
            f"| {s['shape']} | {s['dtype']} | {s['gpu']} | {s['forward_est_us']} | "
            f"{s['forward_pct_of_floor']}, {s['forward_pct_of_achievable_floor']} | "
            f"{s['fwd_bwd_est_us']} | {s['fwd_bwd_pct_of_floor']}, "
            f"{s['fwd_bwd_pct_of_achievable_floor']} | {s['host_torch_forward_us']}, "
            f"{s['host_torch_fwd_bwd_us']}, {s['host_array_forward_us']} | "
            f"{s['host_forward_us']}, {s['host_fwd_bwd_us']} | {s['forward_bound']}, "
            f"{s['fwd_bwd_bound']} |"
        )
    lines += unfold_table(summary)
    inexact = sorted({r["kernel"] for r in records if not r["_exact"]})
    unknown = sorted({u for r in records for u in r["sass_instructions"]["unknown_loops"]})
    lines += [
        "",
        "How the traffic was simulated: each launch ran on one image and one channel slice per "
        "group with its real plan, and its counts were multiplied by the images and slices "
        "left out (exact when slices are full)"
        + (
            f"; at most {max_blocks} evenly spread blocks were traced per launch and counts "
            "scaled by blocks over traced blocks"
            if max_blocks
            else ""
        )
        + ". Scaled, not exact: " + (", ".join(inexact) if inexact else "none") + ".",
        "",
        "Host time: best of five batches of public calls on this machine, the kernel launch "
        "stubbed; each launch's CuPy cost is an assumption ("
        + f"{summary[0]['cupy_launch_us_assumed'] if summary else '-'} µs, "
        "`hardware.CUPY_LAUNCH_SOURCE`) until a GPU measures it.",
    ]
    if unknown:
        lines += ["", "Loops counted once (source line unknown to the model): "
                  + "; ".join(unknown)]
    return "\n".join(lines) + "\n"


def unfold_table(summary: list[dict]) -> list[str]:
    """The modelled op against the unfold formulation's HBM floor (its least traffic)."""
    lines = [
        "",
        "## Against the unfold formulation (this op modelled; unfold: its HBM floor alone)",
        "",
        "| N,C,H,W | dtype | GPU | forward est µs | unfold floor µs | fwd+bwd est µs | "
        "unfold floor µs | unfold extra memory MB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summary:
        lines.append(
            f"| {s['shape']} | {s['dtype']} | {s['gpu']} | {s['forward_est_us']} | "
            f"{s['unfold_forward_floor_us']} | {s['fwd_bwd_est_us']} | "
            f"{s['unfold_fwd_bwd_floor_us']} | {s['unfold_extra_mb']} |"
        )
    return lines


def loop_table(records: list[dict]) -> list[str]:
    """SASS per loop, once per kernel and GPU, for the first shape profiled."""
    lines = [
        "## SASS loops (instructions in the loop's own body, trips per entry, entries per warp;"
        " first shape)",
        "",
        "| GPU | kernel | straight-line | loops: source line -> instructions x trips (entries) |",
        "| --- | --- | ---: | --- |",
    ]
    seen = set()
    for r in records:
        if (r["gpu"], r["kernel"]) in seen:
            continue
        seen.add((r["gpu"], r["kernel"]))
        sass = r["sass_instructions"]
        loops = "; ".join(
            f"{loop['line']} `{loop['source'].rstrip(' {')}` -> {loop['instructions']} x "
            f"{loop['trips']} ({loop['entries_per_warp']:g})"
            for loop in sass["loops"]
        )
        lines.append(f"| {r['gpu']} | {r['kernel']} | {sass['straight_line']} | {loops} |")
    return lines + [""]


def public(records: list[dict]) -> list[dict]:
    return [{field: record[field] for field in PUBLIC_FIELDS} for record in records]


def run(args: argparse.Namespace) -> int:
    problems = problems_from(args)
    gpus = [gpu(key) for key in args.gpu.split(",") if key.strip()]
    if not gpus:
        raise ValueError("--gpu names no GPU")
    if args.max_blocks < 0:
        raise ValueError(f"--max-blocks must be 0 (all) or positive, got {args.max_blocks}")
    max_blocks = args.max_blocks or None
    records, summary = report.profile(problems, gpus, max_blocks)
    print(markdown(records, summary, max_blocks), end="")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"records": public(records), "summary": summary}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0
