"""How much each implementation slows down when busy processes share the CPU.

Every implementation is timed alone, then again while ``busy`` processes spin on the CPU
(each a Python loop, as another user's job would). The ratio of medians is the slowdown;
1.0 means unaffected. The figures are printed and written, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from bench_cases import (
    ALL_CASES,
    DTYPES,
    MODES,
    Case,
    default_out_dir,
    implementations,
    make_inputs,
    split_list,
)
from bench_timing import time_interleaved


def _spinners(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
    for process in processes:
        process.wait()


def measure_contention(
    impls: dict[str, Callable],
    case: Case,
    dtype: str,
    busy: int,
    *,
    reps: int,
    budget_s: float,
) -> list[dict[str, Any]]:
    """One row per (implementation, mode): median alone, median with ``busy`` spinners."""
    ins = {"fwd": make_inputs(case, DTYPES[dtype], "cpu")}
    ins["fwd+bwd"] = {k: v.detach().clone() for k, v in ins["fwd"].items()}
    ins["fwd+bwd"]["feat"].requires_grad_(True)
    ins["fwd+bwd"]["masks"].requires_grad_(True)
    timings: dict[str, dict[str, dict[str, Any]]] = {}
    for phase in ("alone", "busy"):
        spinners = _spinners(busy) if phase == "busy" else []
        try:
            time.sleep(0.5 if spinners else 0)  # let the spinners get scheduled
            for mode in MODES:
                timings[f"{phase}|{mode}"] = time_interleaved(
                    impls, case, ins[mode], mode, "cpu", reps=reps, min_time_s=0, budget_s=budget_s
                )
        finally:
            _stop(spinners)
    rows = []
    for mode in MODES:
        for impl in impls:
            alone = timings[f"alone|{mode}"][impl]
            loaded = timings[f"busy|{mode}"][impl]
            row = {"case": case.name, "dtype": dtype, "impl": impl, "mode": mode, "busy": busy}
            if alone.get("status") != "ok" or loaded.get("status") != "ok":
                row["status"] = f"alone: {alone.get('status')}; busy: {loaded.get('status')}"
            else:
                row.update(
                    status="ok",
                    alone_ms=alone["median_ms"],
                    busy_ms=loaded["median_ms"],
                    alone_min_ms=alone["min_ms"],
                    busy_min_ms=loaded["min_ms"],
                    slowdown=loaded["median_ms"] / alone["median_ms"],
                )
            rows.append(row)
    return rows


def render_contention(rows: list[dict[str, Any]], threads: int) -> str:
    busy = rows[0]["busy"] if rows else 0
    lines = [
        f"# Slowdown with {busy} busy process(es) on {os.cpu_count()} cores "
        f"(torch threads: {threads})",
        "",
        "| shape | dtype | impl | mode | alone ms (median, min) | busy ms (median, min) "
        "| slowdown (median) |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(
                f"| {r['case']} | {r['dtype']} | {r['impl']} | {r['mode']} | {r['status']} | | |"
            )
            continue
        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['impl']} | {r['mode']} "
            f"| {r['alone_ms']:.1f}, {r['alone_min_ms']:.1f} | {r['busy_ms']:.1f}, "
            f"{r['busy_min_ms']:.1f} | {r['slowdown']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def run_contention(args: argparse.Namespace, shapes: list[str] | None) -> int:
    """``--contention``: each implementation alone and with busy processes; figures only."""
    if args.threads:
        torch.set_num_threads(args.threads)
    runnable, _, _ = implementations("cpu")
    if args.impls:
        runnable = {k: v for k, v in runnable.items() if k in split_list(args.impls)}
    case = ALL_CASES[(shapes or ["fpn-52x84"])[0]]
    dtype = (split_list(args.dtypes) or ["fp32"])[0]
    rows = measure_contention(
        runnable, case, dtype, args.busy, reps=args.reps or 5, budget_s=args.budget or 60.0
    )
    md = render_contention(rows, torch.get_num_threads())
    out_dir = Path(args.out if args.out is not None else default_out_dir("cpu"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "contention.md").write_text(md)
    (out_dir / "contention.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(md)
    print(f"results written to {out_dir}")
    return 0
