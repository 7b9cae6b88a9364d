"""How much each implementation slows down when busy processes share the CPU.

Every implementation is timed alone, then again while ``busy`` processes spin on the CPU
(each a Python loop, as another user's job would). The ratio of medians is the slowdown;
1.0 means unaffected. The figures are printed and written, never asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any, Callable

from bench_cases import DTYPES, MODES, Case, make_inputs
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
