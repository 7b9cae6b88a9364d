"""Benchmark RedNet-style involution and CARAFE++'s downsampler against unfold formulations.

Run as a script::

    python benchmarks/bench_reassembly.py [--quick] [--device auto|cpu|cuda] [--reps N]
                                          [--threads N] [--cases inv-c64-56-s1,...] [--out DIR]

or as ``python -m carafe_cupy bench --reassembly [options]``.

Each case is timed twice over: the reassembly op alone (``carafe_cupy.reassemble`` against
``F.unfold`` reassembly, same kernels) and the whole module (:class:`carafe_cupy.Involution`
or :class:`carafe_cupy.CARAFEDownPack` against the same layers with the unfold reassembly),
forward under ``no_grad`` and forward + backward. Implementations run interleaved call by
call; times are min / median / max. Peak memory: on a GPU the allocator's peak, on the CPU
the peak RSS growth of one call in a fresh child process. fp32 throughout.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_* modules beside this

import torch  # noqa: E402
from bench_cases import (  # noqa: E402
    git_commit,
    is_oom,
    load_baselines,
    machine_label,
    resolve_device,
    short_error,
    split_list,
    versions,
)
from bench_children import HWM_NOTE, _child_env, _proc_kib, _reset_hwm  # noqa: E402
from bench_timing import load_average, load_warnings, summarise, sync  # noqa: E402

IMPLS = ("carafe_cupy", "unfold")
MODES = ("fwd", "fwd+bwd")
LEVELS = ("op", "module")


class ReassemblyCase(NamedTuple):
    """One benchmark shape: ``kind`` is "involution" (k = 7, G = C / 16) or "downsample"
    (CARAFE++: k = 5, G = 1, 3x3 encoder, 64 compressed channels)."""

    name: str
    kind: str
    n: int
    c: int
    h: int
    w: int
    stride: int

    @property
    def label(self) -> str:
        return f"{self.kind} N={self.n} C={self.c} {self.h}x{self.w} stride {self.stride}"


# RedNet-50's involution layers (mid channels, input size, stride) at N = 2, and a CARAFE++
# downsampler on an FPN-sized map.
FULL_CASES = (
    ReassemblyCase("inv-c64-56-s1", "involution", 2, 64, 56, 56, 1),
    ReassemblyCase("inv-c128-56-s2", "involution", 2, 128, 56, 56, 2),
    ReassemblyCase("inv-c128-28-s1", "involution", 2, 128, 28, 28, 1),
    ReassemblyCase("inv-c256-28-s2", "involution", 2, 256, 28, 28, 2),
    ReassemblyCase("inv-c256-14-s1", "involution", 2, 256, 14, 14, 1),
    ReassemblyCase("inv-c512-14-s2", "involution", 2, 512, 14, 14, 2),
    ReassemblyCase("inv-c512-7-s1", "involution", 2, 512, 7, 7, 1),
    ReassemblyCase("down-c256-64-s2", "downsample", 2, 256, 64, 64, 2),
)
QUICK_CASES = (
    ReassemblyCase("inv-tiny-s2", "involution", 1, 32, 9, 8, 2),
    ReassemblyCase("down-tiny-s2", "downsample", 1, 16, 9, 8, 2),
)
ALL_CASES = {case.name: case for case in FULL_CASES + QUICK_CASES}


def build_module(case: ReassemblyCase, device: str) -> torch.nn.Module:
    import carafe_cupy

    torch.manual_seed(0)
    if case.kind == "involution":
        module = carafe_cupy.Involution(case.c, kernel_size=7, stride=case.stride)
    else:
        module = carafe_cupy.CARAFEDownPack(case.c, stride=case.stride)
        torch.nn.init.normal_(module.content_encoder.weight, std=0.05)  # trained-like kernels
    return module.to(device)


def runners(case: ReassemblyCase, device: str) -> dict[tuple[str, str], Callable]:
    """``(level, impl) -> f(x)`` for every level and implementation of one case."""
    import carafe_cupy

    unfold = load_baselines().reassemble_unfold
    module = build_module(case, device)
    k, g, t, d = module.window()
    generator = torch.Generator(device=device).manual_seed(1)
    ho, wo = -(-case.h // t), -(-case.w // t)
    kernels = torch.randn(case.n, g * k * k, ho, wo, device=device, generator=generator)
    kernels.requires_grad_(True)
    ops = {"carafe_cupy": carafe_cupy.reassemble, "unfold": unfold}

    def op(impl: str) -> Callable:
        return lambda x: ops[impl](x, kernels, k, g, stride=t, dilation=d)

    def whole(impl: str) -> Callable:
        if impl == "carafe_cupy":
            return module
        return lambda x: unfold(x, module.kernels(x), k, g, stride=t, dilation=d)

    return {
        (level, impl): (op if level == "op" else whole)(impl) for level in LEVELS for impl in IMPLS
    }


def make_input(case: ReassemblyCase, device: str, grad: bool) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(case.n, case.c, case.h, case.w, device=device, generator=generator)
    return x.requires_grad_(grad)


def run_once(fn: Callable, x: torch.Tensor, mode: str) -> None:
    if mode == "fwd":
        with torch.no_grad():
            fn(x)
        return
    out = fn(x)
    out.backward(torch.ones_like(out))


def time_pair(fns: dict[str, Callable], x: torch.Tensor, mode: str, device: str, reps: int):
    """min / median / max of each implementation, interleaved call by call after a warm-up."""
    for fn in fns.values():
        run_once(fn, x, mode)
    sync(device)
    times: dict[str, list[float]] = {impl: [] for impl in fns}
    for round_index in range(reps):
        order = list(fns)[round_index % 2 :] + list(fns)[: round_index % 2]
        for impl in order:
            if device == "cuda":
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                run_once(fns[impl], x, mode)
                end.record()
                end.synchronize()
                times[impl].append(start.elapsed_time(end) / 1e3)
            else:
                start_s = time.perf_counter()
                run_once(fns[impl], x, mode)
                times[impl].append(time.perf_counter() - start_s)
    return {impl: summarise(values) for impl, values in times.items()}


def gpu_peak(fn: Callable, x: torch.Tensor, mode: str) -> int:
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run_once(fn, x, mode)
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def memory_child(case_name: str) -> dict[str, Any]:
    """Runs in a fresh process: peak RSS growth of one call per (level, impl, mode)."""
    case = ALL_CASES[case_name]
    if not _reset_hwm():
        return {"error": "VmHWM reset via /proc/self/clear_refs not available"}
    fns = runners(case, "cpu")
    out: dict[str, Any] = {}
    for mode in MODES:
        x = make_input(case, "cpu", mode != "fwd")
        for (level, impl), fn in fns.items():
            run_once(fn, x, mode)  # warm-up: thread pools, caches and .grad buffers exist
            gc.collect()
            _reset_hwm()
            base = _proc_kib("VmRSS")
            try:
                run_once(fn, x, mode)
                out[f"{level}|{impl}|{mode}"] = max(0, _proc_kib("VmHWM") - base) * 1024
            except Exception as exc:
                out[f"{level}|{impl}|{mode}"] = "OOM" if is_oom(exc) else short_error(exc)
    return out


def cpu_peaks(case: ReassemblyCase, timeout_s: float = 600.0) -> dict[str, Any]:
    import subprocess

    env = _child_env(MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    threads = str(torch.get_num_threads())  # the child runs as the timed calls did
    args = [sys.executable, __file__, "--threads", threads, "--_memory-child", case.name]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"memory child timed out after {timeout_s:.0f} s"}
    if proc.returncode != 0:
        return {"error": f"memory child failed: {(proc.stderr or '?').strip().splitlines()[-1]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_benchmark(
    cases: list[ReassemblyCase], device: str, reps: int, memory: bool = True
) -> dict[str, Any]:
    dev, notes = resolve_device(device)
    load_start = load_average()
    rows: list[dict[str, Any]] = []
    for case in cases:
        fns = runners(case, dev)
        peaks = cpu_peaks(case) if dev == "cpu" and memory else {}
        for mode in MODES:
            x = make_input(case, dev, mode != "fwd")
            for level in LEVELS:
                pair = {impl: fns[(level, impl)] for impl in IMPLS}
                base = {"case": case.name, "shape": case.label, "level": level, "mode": mode}
                try:
                    timed = time_pair(pair, x, mode, dev, reps)
                except Exception as exc:
                    status = "OOM" if is_oom(exc) else f"error: {short_error(exc)}"
                    timed = {impl: {"status": status} for impl in IMPLS}
                for impl in IMPLS:
                    row = base | {"impl": impl} | timed[impl]
                    if dev == "cuda" and row["status"] == "ok":
                        row["peak_mem_bytes"] = gpu_peak(pair[impl], x, mode)
                    elif memory and dev == "cpu":
                        got = peaks.get(f"{level}|{impl}|{mode}", peaks.get("error"))
                        row["peak_mem_bytes"] = got if isinstance(got, int) else None
                        row["peak_mem_note"] = None if isinstance(got, int) else str(got)
                    rows.append(row)
        del fns
        gc.collect()
    load_end = load_average()
    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "device": dev,
        "machine": machine_label(dev),
        "versions": versions(str(getattr(sys.modules.get("carafe_cupy"), "__version__", "?"))),
        "torch_threads": torch.get_num_threads(),
        "reps": reps,
        "load_start": load_start,
        "load_end": load_end,
        "warnings": load_warnings(
            load_start, load_end, torch.get_num_threads() if dev == "cpu" else 1
        ),
        "memory": HWM_NOTE if dev == "cpu" else "torch.cuda.max_memory_allocated growth",
        "notes": notes,
    }
    return {"meta": meta, "cases": {c.name: c._asdict() for c in cases}, "results": rows}


def _cell(row: dict[str, Any], key: str, scale: float, spec: str) -> str:
    value = row.get(key)
    return "-" if value is None else format(value / scale, spec)


def render(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        "# Involution and CARAFE++ downsampling: reassemble vs unfold",
        "",
        f"- date {meta['date']}, commit {meta['commit']}",
        f"- command: `{meta.get('command', '?')}`",
        f"- machine: {meta['machine']} ({meta['device']}), torch {meta['versions']['torch']}",
        f"- {meta['reps']} interleaved rounds per row, fp32; load average "
        f"{meta['load_start']} before, {meta['load_end']} after",
        f"- memory: {meta['memory']}",
        *(f"- warning: {text}" for text in meta["warnings"]),
        "- ratio = unfold / carafe_cupy (time: of the medians and of the minima; memory: "
        "of the peaks); above 1 means carafe_cupy is faster or smaller. On a shared machine "
        "the minima are the least disturbed figures",
        "",
        "| case | level | mode | carafe_cupy ms (min/med/max) | unfold ms (min/med/max) "
        "| time ratio (median) | time ratio (min) | carafe_cupy MiB | unfold MiB | memory ratio |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    keyed = {(r["case"], r["level"], r["mode"], r["impl"]): r for r in report["results"]}
    for case, level, mode, impl in keyed:
        if impl != "carafe_cupy":
            continue
        ours, theirs = keyed[(case, level, mode, impl)], keyed[(case, level, mode, "unfold")]
        if ours["status"] != "ok" or theirs["status"] != "ok":
            statuses = f"{ours['status']} | {theirs['status']}"
            lines.append(f"| {case} | {level} | {mode} | {statuses} | - | - | - | - | - |")
            continue
        times = [
            "/".join(format(r[key], ".2f") for key in ("min_ms", "median_ms", "max_ms"))
            for r in (ours, theirs)
        ]
        mem = (ours.get("peak_mem_bytes"), theirs.get("peak_mem_bytes"))
        mem_ratio = f"{mem[1] / mem[0]:.1f}" if mem[0] and mem[1] is not None else "-"
        lines.append(
            f"| {case} | {level} | {mode} | {times[0]} | {times[1]} | "
            f"{theirs['median_ms'] / ours['median_ms']:.2f} | "
            f"{theirs['min_ms'] / ours['min_ms']:.2f} | "
            f"{_cell(ours, 'peak_mem_bytes', 2**20, '.1f')} | "
            f"{_cell(theirs, 'peak_mem_bytes', 2**20, '.1f')} | {mem_ratio} |"
        )
    lines += ["", "Cases:", ""] + [f"- {name}: {ALL_CASES[name].label}" for name in report["cases"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a few seconds")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--cases", default=None, help="comma list of: " + ",".join(ALL_CASES))
    parser.add_argument("--reps", type=int, default=None, help="rounds per row (default 7)")
    parser.add_argument("--no-memory", action="store_true", help="skip the CPU memory child")
    parser.add_argument("--out", type=Path, default=None, help="write results.md/json here")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads on the CPU (1 keeps a shared machine's load from "
        "stalling the thread pool between calls)",
    )
    parser.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child)))
        return 0
    names = split_list(args.cases)
    unknown = [name for name in names or [] if name not in ALL_CASES]
    if unknown:
        print(f"unknown cases {unknown}; choose from {', '.join(ALL_CASES)}", file=sys.stderr)
        return 2
    cases = (
        [ALL_CASES[n] for n in names] if names else list(QUICK_CASES if args.quick else FULL_CASES)
    )
    reps = args.reps or (3 if args.quick else 7)
    report = run_benchmark(cases, args.device, reps, memory=not args.no_memory)
    given = sys.argv[1:] if argv is None else list(argv)
    report["meta"]["command"] = shlex.join(["python", "benchmarks/bench_reassembly.py", *given])
    markdown = render(report)
    print(markdown)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(markdown)
        (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"results written to {args.out}")
    failed = any(str(r.get("status", "")).startswith("error") for r in report["results"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
