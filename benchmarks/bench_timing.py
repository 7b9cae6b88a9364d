"""Timing that holds up on a shared machine: implementations interleaved call by call,
repeated, summarised as min / median / max, with the machine's load alongside."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

import torch
from bench_cases import Case

# max / min of one row's times above this marks the row as noisy
NOISY_SPREAD = 1.5
# rounds a row gets even when the run's deadline passes while it is being timed
MIN_REPS = 3
# runnable processes per core (beyond this benchmark's own threads) that make timings suspect
BUSY_LOAD_PER_CORE = 0.25


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def call(fn: Callable, case: Case, ins: dict[str, Any], mode: str) -> None:
    if mode == "fwd":
        with torch.no_grad():
            fn(ins["feat"], ins["masks"], case.k, case.g, case.s)
        return
    out = fn(ins["feat"], ins["masks"], case.k, case.g, case.s)
    torch.autograd.grad(out, (ins["feat"], ins["masks"]), ins["grad_out"])


def time_once(fn: Callable, case: Case, ins: dict[str, Any], mode: str, device: str) -> float:
    """Seconds for one call: CUDA events on a GPU, perf_counter on the CPU."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call(fn, case, ins, mode)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start_s = time.perf_counter()
    call(fn, case, ins, mode)
    return time.perf_counter() - start_s


def summarise(times: list[float]) -> dict[str, Any]:
    """min / median / max in ms, the number of calls, and whether the spread is high."""
    row = {
        "status": "ok",
        "min_ms": min(times) * 1e3,
        "median_ms": statistics.median(times) * 1e3,
        "max_ms": max(times) * 1e3,
        "reps": len(times),
    }
    row["spread"] = row["max_ms"] / row["min_ms"] if row["min_ms"] > 0 else float("inf")
    row["noisy"] = row["spread"] > NOISY_SPREAD
    return row


def time_interleaved(
    impls: dict[str, Callable],
    case: Case,
    ins: dict[str, Any],
    mode: str,
    device: str,
    *,
    reps: int,
    min_time_s: float,
    budget_s: float,
    deadline: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Time every implementation on the same inputs, one call each per round, starting each
    round with the next implementation, so a burst of load hits them all alike.

    Each gets one untimed warm-up call first (kernels compile, caches fill); one whose
    warm-up takes longer than ``budget_s`` is left out with that reason as its status.
    Rounds go on until there are ``reps`` of them and ``min_time_s`` has passed, or, past
    ``deadline`` (a ``time.perf_counter()`` value), once there are ``MIN_REPS`` (the
    ``reps`` of each row say how many it got).
    """
    results: dict[str, dict[str, Any]] = {}
    timed: dict[str, list[float]] = {}
    for name, fn in impls.items():
        start = time.perf_counter()
        call(fn, case, ins, mode)
        sync(device)
        first = time.perf_counter() - start
        if first > budget_s:
            results[name] = {
                "status": f"skipped (one call took {first:.1f} s > budget {budget_s:.0f} s)"
            }
        else:
            timed[name] = []
    names = list(timed)
    start = time.perf_counter()
    rounds = 0
    while names and (rounds < reps or (time.perf_counter() - start < min_time_s and rounds < 200)):
        for offset in range(len(names)):
            name = names[(rounds + offset) % len(names)]
            timed[name].append(time_once(impls[name], case, ins, mode, device))
        rounds += 1
        if time.perf_counter() - start > 3 * budget_s * len(names):
            break
        if deadline is not None and rounds >= MIN_REPS and time.perf_counter() > deadline:
            break
    for name in names:
        results[name] = summarise(timed[name])
    return results


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not on every platform
        return None


def load_warnings(start: float | None, end: float | None, own_threads: int) -> list[str]:
    """Warnings when other work was competing for the CPU while the benchmark ran."""
    cores = os.cpu_count() or 1
    limit = BUSY_LOAD_PER_CORE * cores
    warnings = []
    if start is not None and start > limit:
        warnings.append(
            f"load average was {start:.2f} on {cores} cores before the benchmark started: "
            "other processes compete for the CPU, so times are inflated and noisy"
        )
    if end is not None and end - own_threads > limit:
        warnings.append(
            f"load average was {end:.2f} at the end, more than this benchmark's own "
            f"{own_threads} thread(s) explain: timings are suspect; rerun on a quieter machine"
        )
    return warnings


def copy_bandwidth(device: str, nbytes: int) -> float:
    """Device-to-device copy bandwidth in GB/s (read + write counted) for the %-of-peak column."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync(device)
    times = []
    for _ in range(10):
        if device == "cuda":
            ev0 = torch.cuda.Event(enable_timing=True)
            ev1 = torch.cuda.Event(enable_timing=True)
            ev0.record()
            dst.copy_(src)
            ev1.record()
            ev1.synchronize()
            times.append(ev0.elapsed_time(ev1) / 1e3)
        else:
            t = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9
