"""carafe_cupy on the CPU against what a user would run instead, side by side.

Run as ``python -m carafe_cupy bench --peers [options]`` or as a script::

    python benchmarks/bench_cpu_peers.py [--shape 2,256,52,84] [--k 5] [--groups 1] [--scale 2]
                                         [--dtype fp32] [--reps 7] [--threads N] [--out DIR]

Implementations (``cpu_peers.py``): carafe_cupy (whichever CPU path the package takes; the
report names it), the shift-and-accumulate loop under ``torch.compile``, the unfold port under
``torch.compile`` and the eager unfold port. Modes: forward under ``no_grad``, forward and
backward (``torch.autograd.grad`` w.r.t. features and masks), and for the compiled peers also
the forward with grad enabled (their other compiled graph, sometimes the faster forward).

Every implementation is checked against carafe_cupy once (outputs and both gradients) in its
warm-up call, which also compiles. Then every (implementation, mode) is called once per
round, each round starting one further along, so a burst of load from other processes hits
them all alike; times are min / median / max. Peak extra memory: see ``MEMORY_NOTE``. The
floor is the op's FLOPs at this machine's measured matrix-multiply rate, or its minimal bytes
at the measured copy bandwidth, whichever is longer.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import gc
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_* modules beside this

import torch  # noqa: E402
from bench_cases import (  # noqa: E402
    Case,
    git_commit,
    machine_label,
    make_inputs,
    minimal_bytes,
    versions,
)
from bench_children import _proc_kib, _reset_hwm  # noqa: E402
from bench_timing import copy_bandwidth, load_average, load_warnings, summarise  # noqa: E402
from cpu_peers import (  # noqa: E402
    COMPILED,
    PEER_LABELS,
    carafe_flops,
    package_cpu_path,
    peers,
    sgemm_gflops,
)

MiB = 1 << 20
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}
# fwd-grad: the forward alone with grad enabled (the compiled peers' other graph)
MODES = ("fwd", "fwd-grad", "fwd+bwd")
ISSUE_SHAPE = (2, 256, 52, 84)
MALLOC_MMAP_THRESHOLD = 128 * 1024
MEMORY_NOTE = (
    "peak RSS growth of one call in this process after the timed rounds: glibc's mmap "
    f"threshold pinned at {MALLOC_MMAP_THRESHOLD // 1024} KiB (mallopt) so each large buffer "
    "is mapped when allocated and unmapped when freed, the high-water mark reset through "
    "/proc/self/clear_refs, then VmHWM after the call minus VmRSS before it; it counts every "
    "allocation (torch's, numpy's, a JIT's), including the outputs and gradients returned"
)


def pin_mmap_threshold() -> bool:
    """glibc: allocate every buffer of at least MALLOC_MMAP_THRESHOLD with mmap, so RSS
    follows allocations and frees; False where that is not glibc (no memory figures then)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not a glibc (or not a POSIX) C library
        return False
    m_mmap_threshold = -3  # from glibc's malloc.h
    return mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD) == 1


def run_once(fn: Callable, case: Case, ins: dict[str, Any], mode: str) -> tuple:
    """One call in ``mode``; returns what it computed (output, or both gradients)."""
    args = (case.k, case.g, case.s)
    if mode == "fwd":
        with torch.no_grad():
            return (fn(ins["feat"], ins["masks"], *args),)
    out = fn(ins["feat_grad"], ins["masks_grad"], *args)
    if mode == "fwd-grad":
        return (out.detach(),)
    return torch.autograd.grad(out, (ins["feat_grad"], ins["masks_grad"]), ins["grad_out"])


def _check(got: tuple, want: tuple) -> str:
    """'ok', or how far the peer's result is from carafe_cupy's."""
    names = ("output",) if len(want) == 1 else ("grad_features", "grad_masks")
    for name, a, b in zip(names, got, want):
        scale = float(b.abs().max()) or 1.0
        err = float((a.double() - b.double()).abs().max())
        if not err <= 1e-4 * scale + 1e-6:  # fp32 sums of up to C products, not NaN
            return f"{name} differs from carafe_cupy by {err:.3g} (max |value| {scale:.3g})"
    return "ok"


def _inputs(case: Case, dtype: torch.dtype) -> dict[str, Any]:
    ins = make_inputs(case, dtype, "cpu")
    ins["feat_grad"] = ins["feat"].detach().clone().requires_grad_(True)
    ins["masks_grad"] = ins["masks"].detach().clone().requires_grad_(True)
    return ins


def _items(names: list[str]) -> list[tuple[str, str]]:
    return [(i, m) for m in MODES for i in names if m != "fwd-grad" or i in COMPILED]


def warm_up_and_check(
    impls: dict[str, Callable], case: Case, ins: dict[str, Any], budget_s: float
) -> dict[tuple[str, str], dict[str, Any]]:
    """First call of every (implementation, mode): timed (it compiles) and checked against
    carafe_cupy's result; one that fails, or takes longer than ``budget_s``, is not timed."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    reference: dict[str, tuple] = {}
    for impl, mode in _items(list(impls)):
        row = rows[(impl, mode)] = {"impl": impl, "mode": mode}
        start = time.perf_counter()
        try:
            got = run_once(impls[impl], case, ins, mode)
        except Exception as exc:  # a peer that cannot run here (no C++ compiler, ...)
            first_line = (str(exc).splitlines() or [""])[0][:160]
            row["status"] = f"error: {type(exc).__name__}: {first_line}"
            continue
        row["first_call_s"] = time.perf_counter() - start
        if impl == "carafe_cupy":
            reference[mode] = got
            row["check"] = "reference"
        else:
            want = reference.get(mode, reference.get("fwd"))
            row["check"] = _check(got, want) if want is not None else "not checked"
        if row["check"] not in ("ok", "reference", "not checked"):
            row["status"] = f"wrong result: {row['check']}"
        elif row["first_call_s"] > budget_s:
            row["status"] = f"skipped (first call {row['first_call_s']:.1f} s > {budget_s:.0f} s)"
        else:
            row["status"] = "timing"
    return rows


def time_rounds(impls, case, ins, rows, reps: int) -> None:
    """``reps`` rounds of one call per (implementation, mode), each round starting one
    further along the list."""
    items = [key for key, row in rows.items() if row["status"] == "timing"]
    times: dict[tuple[str, str], list[float]] = {key: [] for key in items}
    for round_index in range(reps):
        for offset in range(len(items)):
            impl, mode = items[(round_index + offset) % len(items)]
            start = time.perf_counter()
            run_once(impls[impl], case, ins, mode)
            times[(impl, mode)].append(time.perf_counter() - start)
    for key in items:
        rows[key].update(summarise(times[key]))


def measure_memory(impls, case, ins, rows) -> str | None:
    """Fill ``peak_mem_bytes`` of every timed row; returns why not, where it cannot."""
    if not _reset_hwm():
        return "not measured: needs Linux's /proc/self/clear_refs"
    for (impl, mode), row in rows.items():
        if row.get("status") != "ok":
            continue
        gc.collect()
        _reset_hwm()
        base = _proc_kib("VmRSS")
        kept = run_once(impls[impl], case, ins, mode)
        row["peak_mem_bytes"] = max(0, _proc_kib("VmHWM") - base) * 1024
        del kept
    return None


def floors(case: Case, dtype: torch.dtype, gemm_gflops: float, copy_gbps: float) -> dict:
    """Per mode: FLOPs, minimal bytes, and the floor time in ms (compute or memory bound)."""
    out = {}
    for mode in ("fwd", "fwd+bwd"):
        flops = carafe_flops(case.n, case.c, case.h, case.w, case.k, case.s, mode)
        nbytes = minimal_bytes(case, dtype, mode)
        compute_ms, memory_ms = flops / gemm_gflops / 1e6, nbytes / copy_gbps / 1e6
        out[mode] = {
            "flops": flops,
            "bytes": nbytes,
            "compute_ms": compute_ms,
            "memory_ms": memory_ms,
            "floor_ms": max(compute_ms, memory_ms),
            "bound": "compute" if compute_ms >= memory_ms else "memory",
        }
    return out


def add_rates(rows, floor: dict) -> None:
    for (_, mode), row in rows.items():
        if row.get("status") == "ok":
            f = floor["fwd+bwd" if mode == "fwd+bwd" else "fwd"]
            row["gflops"] = f["flops"] / row["median_ms"] / 1e6
            row["pct_floor"] = 100 * f["floor_ms"] / row["median_ms"]
            row["pct_floor_min"] = 100 * f["floor_ms"] / row["min_ms"]


def _get(rows, impl: str, mode: str, key: str) -> float | None:
    row = rows.get((impl, mode))
    return row.get(key) if row and row.get("status") == "ok" else None


def ratios(rows) -> list[dict[str, Any]]:
    """carafe_cupy against each peer: peer time / carafe_cupy time, on medians and minima.
    Against the compiled peers' forward, the faster of their two forward graphs."""
    out = []
    for peer in ("shift_compiled", "unfold_compiled", "unfold_eager"):
        for mode in ("fwd", "fwd+bwd"):
            peer_modes = ("fwd", "fwd-grad") if mode == "fwd" and peer in COMPILED else (mode,)
            for key in ("median_ms", "min_ms"):
                ours = _get(rows, "carafe_cupy", mode, key)
                theirs = [t for m in peer_modes if (t := _get(rows, peer, m, key)) is not None]
                if ours and theirs:
                    out.append(
                        {
                            "peer": peer,
                            "mode": mode,
                            "on": key[:-3],
                            "peer_modes": peer_modes,
                            "ratio": min(theirs) / ours,
                        }
                    )
    return out


def _ms(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if row.get("status") != "ok":
        return str(row.get("status", "?")).split(":")[0]
    flag = " (noisy)" if row.get("noisy") else ""
    return f"{row['min_ms']:.4g} / {row['median_ms']:.4g} / {row['max_ms']:.4g}{flag}"


def _mib(row: dict[str, Any] | None) -> str:
    if row is None or row.get("peak_mem_bytes") is None:
        return "-"
    return f"{row['peak_mem_bytes'] / MiB:.0f}"


def render(report: dict[str, Any]) -> str:
    meta, rows = report["meta"], {(r["impl"], r["mode"]): r for r in report["rows"]}
    lines = [f"# CARAFE on the CPU against its peers: {meta['machine']}", ""]
    lines += [f"- WARNING: {w}" for w in meta["warnings"]]
    lines += [
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}  commit: `{meta['commit']}`",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- shape: {meta['shape']}, {meta['dtype']}, {meta['threads']} torch threads",
        f"- carafe_cupy's CPU path: {meta['cpu_path']}",
        f"- timing: perf_counter, {meta['reps']} interleaved rounds after a checked warm-up call "
        "(which compiles); min / median / max ms",
        f"- memory: {meta['memory']}",
        f"- load average (1 min): {meta['load_start']} at the start, {meta['load_end']} at the end",
        "",
        "| implementation | fwd ms | fwd, grad-enabled graph ms | fwd+bwd ms | fwd MiB "
        "| fwd+bwd MiB | fwd GFLOP/s | fwd+bwd GFLOP/s | first call s (fwd / f+b) | check |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for impl, label in PEER_LABELS.items():
        if not any(i == impl for i, _ in rows):
            continue
        f, g, b = rows.get((impl, "fwd")), rows.get((impl, "fwd-grad")), rows.get((impl, "fwd+bwd"))
        rate = [f"{r['gflops']:.3g}" if r and "gflops" in r else "-" for r in (f, b)]
        first = [f"{r['first_call_s']:.2f}" if r and "first_call_s" in r else "-" for r in (f, b)]
        checks = {r.get("check") for r in (f, g, b) if r and r.get("check")}
        lines.append(
            f"| {label} | {_ms(f)} | {_ms(g)} | {_ms(b)} | {_mib(f)} | {_mib(b)} | {rate[0]} "
            f"| {rate[1]} | {first[0]} / {first[1]} | {', '.join(sorted(checks)) or '-'} |"
        )
    problems = [r for r in report["rows"] if r.get("status") != "ok"]
    if problems:
        lines += [""] + [f"- {r['impl']} {r['mode']}: {r['status']}" for r in problems]
    floor = report["floor"]
    lines += [
        "",
        f"Floor: matrix multiply (torch.mm, {report['gemm']['size']}^2, best of "
        f"{report['gemm']['repeats']}) {report['gemm']['gflops']:.1f} GFLOP/s; copy "
        f"{report['copy_gbps']:.1f} GB/s (read + write).",
        "",
    ]
    for mode, f in floor.items():
        ours = rows.get(("carafe_cupy", mode), {})
        pct = (
            f"; carafe_cupy at {ours['pct_floor']:.2f}% of it (median), "
            f"{ours['pct_floor_min']:.2f}% (min)"
            if "pct_floor" in ours
            else ""
        )
        lines.append(
            f"- {mode}: {f['flops'] / 1e9:.3g} GFLOP, {f['bytes'] / MiB:.1f} MiB minimal traffic: "
            f"floor {f['floor_ms']:.2f} ms ({f['bound']}-bound){pct}"
        )
    lines += ["", "carafe_cupy's speed-up (peer time / carafe_cupy time):", ""]
    by = {(r["peer"], r["mode"], r["on"]): r["ratio"] for r in report["ratios"]}
    for peer in ("shift_compiled", "unfold_compiled", "unfold_eager"):
        for mode in ("fwd", "fwd+bwd"):
            med, low = by.get((peer, mode, "median")), by.get((peer, mode, "min"))
            if med is None or low is None:
                continue
            which = " (its faster forward graph)" if mode == "fwd" and peer in COMPILED else ""
            lines.append(
                f"- vs {PEER_LABELS[peer]}, {mode}{which}: {med:.2f}x on medians, "
                f"{low:.2f}x on minima"
            )
    return "\n".join(lines) + "\n"


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"--shape wants N,C,H,W positive integers, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument(
        "--shape",
        type=parse_shape,
        default=ISSUE_SHAPE,
        help="N,C,H,W of the features (default %(default)s: the 52x84 FPN level, N=2, C=256)",
    )
    p.add_argument("--k", type=int, default=5, help="kernel size (default %(default)s)")
    p.add_argument("--groups", type=int, default=1, help="groups G (default %(default)s)")
    p.add_argument("--scale", type=int, default=2, help="scale factor s (default %(default)s)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--reps", type=int, default=7, help="interleaved rounds (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--impls", default=None, help="comma list of " + ",".join(PEER_LABELS))
    p.add_argument(
        "--budget",
        type=float,
        default=900.0,
        help="seconds a first call (with its compilation) may take before its row is left "
        "out (default %(default)s: torch.compile takes minutes on a loaded 2-core machine)",
    )
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the compiled peers (default %(default)s)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory calls")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results directory (default ./carafe_bench_out/<date>-cpu-peers)",
    )
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    for name, value, wrong in (
        ("--k", args.k, args.k < 1 or args.k % 2 == 0),
        ("--groups", args.groups, args.groups < 1 or args.shape[1] % args.groups),
        ("--scale", args.scale, args.scale < 1),
        ("--reps", args.reps, args.reps < 1),
    ):
        if wrong:
            want = {"--k": "an odd kernel size >= 1", "--groups": "a divisor of C >= 1"}
            parser.error(f"{name} must be {want.get(name, 'at least 1')}, got {value}")
    t_start, load_start = time.perf_counter(), load_average()
    commit = git_commit()  # the code measured, before anything may change the checkout
    memory_pinned = not args.no_memory and pin_mmap_threshold()
    if args.threads:
        torch.set_num_threads(args.threads)
    case = Case("peers", *args.shape, k=args.k, g=args.groups, s=args.scale)
    dtype = DTYPES[args.dtype]
    wanted = args.impls.split(",") if args.impls else list(PEER_LABELS)
    if "carafe_cupy" not in wanted or any(i not in PEER_LABELS for i in wanted):
        names = ", ".join(PEER_LABELS)
        parser.error(f"--impls must name carafe_cupy and only {names}; got {args.impls}")
    impls = {i: fn for i, fn in peers(args.compile_backend).items() if i in wanted}
    gemm = sgemm_gflops(dtype)
    copy_gbps = copy_bandwidth("cpu", 256 * MiB)
    ins = _inputs(case, dtype)
    rows = warm_up_and_check(impls, case, ins, args.budget)
    time_rounds(impls, case, ins, rows, args.reps)
    memory = MEMORY_NOTE if memory_pinned else "not measured (--no-memory, or not glibc)"
    if memory_pinned:
        memory = measure_memory(impls, case, ins, rows) or memory
    floor = floors(case, dtype, gemm["gflops"], copy_gbps)
    add_rates(rows, floor)
    load_end = load_average()
    threads = torch.get_num_threads()
    command = " ".join((prog or "python benchmarks/bench_cpu_peers.py", shlex.join(argv)))
    report = {
        "meta": {
            "command": command.strip(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit,
            "machine": machine_label("cpu"),
            "versions": versions(str(getattr(sys.modules.get("carafe_cupy"), "__version__", "?"))),
            "shape": case.label,
            "dtype": args.dtype,
            "threads": threads,
            "cpu_path": package_cpu_path(),
            "compile_backend": args.compile_backend,
            "reps": args.reps,
            "memory": memory,
            "load_start": load_start,
            "load_end": load_end,
            "warnings": load_warnings(load_start, load_end, threads),
            "wall_s": round(time.perf_counter() - t_start, 1),
        },
        "gemm": gemm,
        "copy_gbps": copy_gbps,
        "floor": floor,
        "rows": list(rows.values()),
        "ratios": ratios(rows),
    }
    text = render(report)
    out_dir = args.out or Path("carafe_bench_out") / f"{_dt.date.today().isoformat()}-cpu-peers"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / "results.md").write_text(text)
    print(text + f"\nresults written to {out_dir}")
    bad = [r for r in rows.values() if r["impl"] == "carafe_cupy" and r["status"] != "ok"]
    wrong = [r for r in rows.values() if str(r["status"]).startswith("wrong")]
    return 1 if bad or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
