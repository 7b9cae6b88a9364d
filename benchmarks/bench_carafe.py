"""Benchmark carafe_cupy against two unfold ports, shift-accumulate and (if present) mmcv.

Run as a script (every shape and dtype by default)::

    python benchmarks/bench_carafe.py [--quick] [--device auto|cpu|cuda] [--dtypes fp32,bf16]
                                      [--shapes fpn-52x84,...] [--out DIR] [--contention]

or as ``python -m carafe_cupy bench`` (short by default, ``--full`` for everything), or load
this file by path and call :func:`run_benchmark` or :func:`main`. Implementations are
timed interleaved, call by call, and reported as min / median / max. Results (markdown,
JSON, PNG) go to ``--out``, by default ``./carafe_bench_out/<date>-<device>/``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_* modules beside this

import torch  # noqa: E402
from bench_carafepack import carafepack_fused_vs_unfused  # noqa: E402
from bench_cases import (  # noqa: E402, F401  (names re-exported for callers of this file)
    ALL_CASES,
    DTYPES,
    FULL_CASES,
    IMPL_ORDER,
    MODES,
    QUICK_CASES,
    Case,
    available_bytes,
    default_out_dir,
    device_name,
    estimate_bytes,
    git_commit,
    implementations,
    is_oom,
    machine_label,
    make_inputs,
    minimal_bytes,
    resolve_device,
    short_error,
    slugify,
    split_list,
    versions,
)
from bench_children import (  # noqa: E402
    HWM_NOTE,
    cpu_peak_bytes,
    first_call_child,
    first_call_latency,
    gpu_peak_bytes,
    memory_child,
)
from bench_contention import run_contention  # noqa: E402
from bench_progress import Progress  # noqa: E402
from bench_report import add_speedups, headline, make_plots, render_markdown  # noqa: E402
from bench_timing import copy_bandwidth, load_average, load_warnings, time_interleaved  # noqa: E402

MiB = 1 << 20


def _unsupported(dtype: torch.dtype, device: str) -> str | None:
    """None if the dtype can be benchmarked on the device, else the reason why not."""
    if device == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return "bf16 not supported by this GPU"
    return None


def _choose(quick: bool, dev: str, dtypes, shapes, notes: list[str]):
    cases = list(QUICK_CASES if quick else FULL_CASES)
    if shapes:
        cases = [ALL_CASES[s] if isinstance(s, str) else Case(*s) for s in shapes]
    if dtypes:
        dnames = list(dtypes)
    elif quick and dev == "cpu":
        # fp16 on CPU is not a deployment target and slow there; keep the short run short.
        dnames = ["fp32", "bf16"]
        notes.append("short run on CPU: fp16 left out (use --full or pass --dtypes).")
    else:
        dnames = ["fp32", "bf16", "fp16"]
    for d in dnames:
        if d not in DTYPES:
            raise ValueError(f"unknown dtype {d!r}; choose from {sorted(DTYPES)}")
    return cases, dnames


def _new_row(case: Case, dname: str, impl: str, mode: str) -> dict[str, Any]:
    return {
        "case": case.name,
        "shape": case.label,
        "dtype": dname,
        "impl": impl,
        "mode": mode,
        "bytes_min": minimal_bytes(case, DTYPES[dname], mode),
    }


def _measure_group(rows, runnable, case, dname, mode, ins, dev, settings, avail, t_start) -> None:
    """Fill the rows of one (case, dtype, mode): skips first, then one interleaved timing."""
    dtype = DTYPES[dname]
    why = _unsupported(dtype, dev)
    total_budget = settings["total_budget_s"]
    to_time = {}
    for impl, row in rows.items():
        need = estimate_bytes(impl, case, dtype, mode)
        if why:
            row["status"] = f"skipped ({why})"
        elif total_budget and time.perf_counter() - t_start > total_budget:
            row["status"] = f"skipped (whole-run budget {total_budget:.0f} s spent)"
        elif need > 0.8 * avail:
            row["status"] = (
                f"skipped (needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available)"
            )
        else:
            to_time[impl] = runnable[impl]
    try:
        timed = time_interleaved(
            to_time,
            case,
            ins,
            mode,
            dev,
            reps=settings["reps"],
            min_time_s=settings["min_time"],
            budget_s=settings["budget"],
            deadline=t_start + total_budget if total_budget else None,
        )
    except Exception as exc:
        status = "OOM" if is_oom(exc) else f"error: {short_error(exc)}"
        timed = {impl: {"status": status} for impl in to_time}
        if dev == "cuda":
            torch.cuda.empty_cache()
    for impl, got in timed.items():
        row = rows[impl]
        row.update(got)
        if row["status"] != "ok":
            continue
        row["gbps"] = row["bytes_min"] / (row["median_ms"] / 1e3) / 1e9
        row["pct_copy_bw"] = 100 * row["gbps"] / settings["copy_bw"]
        if dev == "cuda":
            row["peak_mem_bytes"] = gpu_peak_bytes(runnable[impl], case, ins, mode)


def _add_cpu_memory(results, case, mem_runs, settings, t_start) -> None:
    total_budget = settings["total_budget_s"]
    left = total_budget - (time.perf_counter() - t_start) if total_budget else None
    if left is not None and left < 3.0:  # a child needs about that to start (torch import)
        mem = {"error": f"skipped (whole-run budget {total_budget:.0f} s spent)"}
    else:
        # within the whole-run budget: the short run ends on time even if the child does not
        timeout = max(120.0, 20 * settings["budget"]) if left is None else left
        mem = cpu_peak_bytes(case, mem_runs, timeout_s=timeout, threads=torch.get_num_threads())
    for row in results:
        if row["case"] != case.name or row.get("status") != "ok":
            continue
        val = mem.get(f"{row['dtype']}|{row['impl']}|{row['mode']}", mem.get("error", "n/a"))
        row["peak_mem_bytes"] = val if isinstance(val, int) else None
        if not isinstance(val, int):
            row["peak_mem_note"] = str(val)


def run_benchmark(
    quick: bool,
    device: str,
    out_dir: Path | None,
    plot: bool,
    *,
    dtypes: list[str] | None = None,
    shapes: list[str] | list[Case] | None = None,
    impls: list[str] | None = None,
    budget_s: float | None = None,
    measure_memory: bool = True,
    first_call: bool = True,
    progress: bool = True,
    verbose: bool = True,
    threads: int | None = None,
    total_budget_s: float | None = None,
    reps: int | None = None,
) -> dict[str, Any]:
    """Run the benchmark and write results.md / results.json / PNG plots to ``out_dir``.

    ``out_dir=None`` means :func:`default_out_dir`. ``shapes`` takes case names (see
    ``ALL_CASES``) or ``Case`` tuples; ``impls`` restricts the implementations.
    The short run (``quick``) on a CPU uses one torch thread unless ``threads`` says otherwise
    (and gives the caller's setting back at the end), and stops measuring ``total_budget_s``
    (default 45 s) after its start: rows left then are reported as not measured, with why.
    Returns the same dict that is written as JSON.
    """
    t_start = time.perf_counter()
    load_start = load_average()
    dev, notes = resolve_device(device)
    threads_before = torch.get_num_threads()
    if threads is None and quick and dev == "cpu" and threads_before > 1:
        # On a shared CPU a thread that loses its core stalls every op of the others (each
        # op waits for its slowest thread): many times slower, and the short run would not
        # fit in its budget. One thread per op measures every implementation alike.
        threads = 1
        notes.append(
            "short run on CPU: 1 torch thread, so other processes on the machine do not stall "
            "the ops (use --threads N for more, or --full)."
        )
        restore_threads = threads_before  # the caller's setting, once the run is done
    else:
        restore_threads = None
    if threads:
        torch.set_num_threads(threads)
    cases, dnames = _choose(quick, dev, dtypes, shapes, notes)
    if total_budget_s is None and quick:
        # The short run must stay under a minute even on a loaded 2-core machine: timing and
        # memory children end by this many seconds after the start; what is left when it is
        # spent is reported as not measured. The rest (start-up, plots) takes a few seconds.
        total_budget_s = 45.0
    runnable, impl_notes, carafe_ver = implementations(dev)
    if impls:
        runnable = {k: v for k, v in runnable.items() if k in impls}
    order = [i for i in IMPL_ORDER if i in runnable] + [i for i in runnable if i not in IMPL_ORDER]
    out_dir = Path(out_dir if out_dir is not None else default_out_dir(dev))
    out_dir.mkdir(parents=True, exist_ok=True)
    copy_nbytes = (64 if quick else 256) * MiB
    settings = {
        "total_budget_s": total_budget_s,
        "budget": budget_s if budget_s is not None else (5.0 if quick else 30.0),
        "reps": reps or (5 if quick else 15),
        "min_time": 0.0 if quick else 1.0,
        "copy_bw": copy_bandwidth(dev, copy_nbytes),
    }
    if carafe_ver.startswith("not importable"):
        notes.append(f"carafe_cupy {carafe_ver}: speed-ups not computed.")

    results: list[dict[str, Any]] = []
    bar = Progress(len(cases) * len(dnames) * len(MODES), progress)
    avail = available_bytes(dev)
    for case in cases:
        mem_runs: list[tuple[str, str, str]] = []
        for dname in dnames:
            ins_fwd = make_inputs(case, DTYPES[dname], dev)
            ins_bwd = {k: v.detach().clone() for k, v in ins_fwd.items()}
            ins_bwd["feat"].requires_grad_(True)
            ins_bwd["masks"].requires_grad_(True)
            for mode in MODES:
                bar.step(f"{case.name} {dname} {mode}")
                rows = {impl: _new_row(case, dname, impl, mode) for impl in order}
                results.extend(rows.values())
                ins = ins_fwd if mode == "fwd" else ins_bwd
                _measure_group(
                    rows, runnable, case, dname, mode, ins, dev, settings, avail, t_start
                )
                mem_runs += [(dname, i, mode) for i, r in rows.items() if r["status"] == "ok"]
            del ins_fwd, ins_bwd
            gc.collect()
        if dev == "cpu" and measure_memory:
            _add_cpu_memory(results, case, mem_runs, settings, t_start)
        if dev == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    add_speedups(results)
    load_end = load_average()
    threads_used = torch.get_num_threads() if dev == "cpu" else 1
    meta: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "device": dev,
        "device_name": device_name(dev),
        "machine": machine_label(dev),
        "versions": versions(carafe_ver),
        "quick": quick,
        "torch_threads": torch.get_num_threads(),
        "budget_s": settings["budget"],
        "total_budget_s": total_budget_s,
        "timing": (
            ("CUDA events" if dev == "cuda" else "perf_counter")
            + ", one warm-up call each, then implementations interleaved call by call"
        ),
        "memory": (
            "torch.cuda.max_memory_allocated after reset, minus allocated before the call "
            "(torch allocator only)"
            if dev == "cuda"
            else HWM_NOTE
        ),
        "gbps": "minimal bytes: fwd = feat+masks+out; fwd+bwd adds grad_out+grad_feat+grad_masks",
        "load_start": load_start,
        "load_end": load_end,
        "notes": notes,
        "headline": headline(results, load_warnings(load_start, load_end, threads_used)),
    }
    report: dict[str, Any] = {
        "schema": 2,
        "meta": meta,
        "copy_bandwidth_gbps": settings["copy_bw"],
        "copy_bytes": copy_nbytes,
        "implementations": {i: "ok" for i in order} | impl_notes,
        "cases": {c.name: c._asdict() for c in cases},
        "dtypes": dnames,
        "first_call": (
            first_call_latency()
            if dev == "cuda" and first_call and "carafe_cupy" in runnable
            else ("not applicable (CPU: no run-time compilation)" if dev == "cpu" else "not run")
        ),
        "results": results,
        "carafepack_fused": carafepack_fused_vs_unfused(cases, dnames, dev),
    }
    report["plots"] = make_plots(report, out_dir) if plot else ["plot disabled"]
    md = render_markdown(report)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / "results.md").write_text(md)
    report["out_dir"] = str(out_dir)
    meta["wall_s"] = round(time.perf_counter() - t_start, 1)
    if verbose:
        print(md)
        for p in report["plots"]:
            print(f"plot: {p}")
        print(f"results written to {out_dir}")
    if restore_threads:
        torch.set_num_threads(restore_threads)
    return report


def build_parser(
    prog: str | None = None, quick_by_default: bool = False
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        default=quick_by_default,
        help="small shapes, one torch thread on a CPU, under a minute"
        + (" (the default here)" if quick_by_default else ""),
    )
    size.add_argument(
        "--full",
        dest="quick",
        action="store_false",
        help="every shape and dtype" + ("" if quick_by_default else " (the default here)"),
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtypes", default=None, help="comma list of fp32,bf16,fp16")
    p.add_argument(
        "--shapes", default=None, help="comma list of case names: " + ",".join(ALL_CASES)
    )
    p.add_argument("--impls", default=None, help="comma list, e.g. carafe_cupy,unfold_lowres")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results directory (default: ./carafe_bench_out/<date>-<device>)",
    )
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--budget", type=float, default=None, help="seconds allowed for one call")
    p.add_argument("--reps", type=int, default=None, help="interleaved rounds per row")
    p.add_argument("--no-memory", action="store_true", help="skip the CPU memory child runs")
    p.add_argument("--no-first-call", action="store_true", help="skip cold/warm compile timing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    p.add_argument(
        "--contention",
        action="store_true",
        help="CPU: time each implementation alone and with --busy spinning processes, and "
        "print the slowdowns (first of --shapes, default fpn-52x84; first of --dtypes)",
    )
    p.add_argument("--busy", type=int, default=1, help="busy processes for --contention")
    p.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    p.add_argument(
        "--_first-call-child", dest="first_call_child", action="store_true", help=argparse.SUPPRESS
    )
    return p


def main(
    argv: list[str] | None = None, prog: str | None = None, quick_by_default: bool = False
) -> int:
    args = build_parser(prog, quick_by_default).parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return 0
    if args.first_call_child:
        print(json.dumps(first_call_child()))
        return 0
    shapes = split_list(args.shapes)
    for s in shapes or []:
        if s not in ALL_CASES:
            print(f"unknown shape {s!r}; choose from {', '.join(ALL_CASES)}", file=sys.stderr)
            return 2
    if args.contention:
        return run_contention(args, shapes)
    report = run_benchmark(
        args.quick,
        args.device,
        args.out,
        args.plot,
        dtypes=split_list(args.dtypes),
        shapes=shapes,
        impls=split_list(args.impls),
        budget_s=args.budget,
        measure_memory=not args.no_memory,
        first_call=not args.no_first_call,
        progress=not args.no_progress,
        threads=args.threads,
        reps=args.reps,
    )
    bad = [r for r in report["results"] if str(r.get("status", "")).startswith("error")]
    return 1 if bad and any(r["impl"] == "carafe_cupy" for r in bad) else 0


if __name__ == "__main__":
    sys.exit(main())
