"""Benchmark carafe_cupy against the unfold port, shift-accumulate and (if present) mmcv.

Run as a script::

    python benchmarks/bench_carafe.py [--quick] [--device auto|cpu|cuda] [--dtypes fp32,bf16]
                                      [--shapes fpn-13x21,...] [--out DIR] [--plot/--no-plot]

or load this file by path and call :func:`run_benchmark` (or :func:`main` with an argv list).
Results (markdown, JSON, PNG) go to ``benchmarks/results/<YYYY-MM-DD>-<device-slug>/``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

HERE = Path(__file__).resolve().parent
RESULTS_ROOT = HERE / "results"
IMPL_ORDER = ("carafe_cupy", "unfold", "shift", "mmcv", "carafe_ext")
MODES = ("fwd", "fwd+bwd")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MiB = 1 << 20


class Case(NamedTuple):
    name: str
    n: int
    c: int
    h: int
    w: int
    k: int = 5
    g: int = 1
    s: int = 2

    @property
    def label(self) -> str:
        return (
            f"{self.n}x{self.c}x{self.h}x{self.w}->{self.h * self.s}x{self.w * self.s} "
            f"k{self.k} g{self.g} s{self.s}"
        )


# FPN levels of a 416x672 input (strides 32..4), upsampled x2 as in the CARAFE FPN neck.
FULL_CASES = (
    Case("fpn-13x21", 2, 256, 13, 21),
    Case("fpn-26x42", 2, 256, 26, 42),
    Case("fpn-52x84", 2, 256, 52, 84),
    Case("fpn-104x168", 2, 256, 104, 168),
    Case("square-64x64", 2, 256, 64, 64),
    Case("authors-100x100", 2, 1024, 100, 100),
    Case("fpn-52x84-k7", 2, 256, 52, 84, k=7),
    Case("fpn-52x84-g4", 2, 256, 52, 84, g=4),
)
QUICK_CASES = (
    Case("quick-13x21", 2, 64, 13, 21),
    Case("quick-26x42", 2, 64, 26, 42),
)
ALL_CASES = {c.name: c for c in FULL_CASES + QUICK_CASES}


# --------------------------------------------------------------------------- helpers


def _load_baselines() -> Any:
    """Import the sibling ``baselines.py`` by path so this file works as script or by path."""
    name = "carafe_bench_baselines"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "baselines.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _import_carafe_cupy() -> tuple[Callable | None, str]:
    """Lazy import: the package may be absent (then it is reported, not fatal)."""
    try:
        mod = importlib.import_module("carafe_cupy")
        return mod.carafe, str(getattr(mod, "__version__", "unknown"))
    except Exception as exc:  # any import failure means "not available"
        return None, f"not importable ({type(exc).__name__}: {exc})"


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return _cpu_model()


def slugify(text: str) -> str:
    text = re.sub(r"\(r\)|\(tm\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def versions(carafe_version: str) -> dict[str, str]:
    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "carafe_cupy": carafe_version,
    }
    try:
        import cupy

        out["cupy"] = cupy.__version__
    except Exception as exc:  # cupy is optional on CPU machines
        out["cupy"] = f"not importable ({type(exc).__name__})"
    try:
        import numpy

        out["numpy"] = numpy.__version__
    except ImportError:
        out["numpy"] = "not importable"
    if torch.cuda.is_available():
        out["torch_cuda"] = str(torch.version.cuda)
    return out


class _Progress:
    """tqdm when installed, else a one-line text bar on stderr."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled, self._bar = total, 0, enabled, None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc="carafe bench", unit="run", file=sys.stderr)
            except ImportError:
                self._bar = None

    def step(self, text: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(1)
            return
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\r[{bar}] {self.done}/{self.total} {text[:50]:<50}")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# --------------------------------------------------------------------------- measurement


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_inputs(case: Case, dtype: torch.dtype, device: str, seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w, k, g, s = case[1:]
    feat = torch.randn(n, c, h, w, generator=gen).to(device=device, dtype=dtype)
    # Sigmoid-like positive weights, as produced by a CARAFE mask encoder.
    masks = torch.rand(n, g * k * k, h * s, w * s, generator=gen).to(device=device, dtype=dtype)
    grad_out = torch.randn(n, c, h * s, w * s, generator=gen).to(device=device, dtype=dtype)
    return {"feat": feat, "masks": masks, "grad_out": grad_out}


def minimal_bytes(case: Case, dtype: torch.dtype, mode: str) -> int:
    """Bytes an ideal kernel must move: each input and output touched exactly once."""
    n, c, h, w, k, g, s = case[1:]
    elt = torch.empty((), dtype=dtype).element_size()
    feat, masks, out = n * c * h * w, n * g * k * k * h * s * w * s, n * c * h * s * w * s
    fwd = feat + masks + out
    # Backward adds grad_output read plus grad_features and grad_masks written.
    return elt * (fwd if mode == "fwd" else fwd + out + feat + masks)


def estimate_bytes(impl: str, case: Case, dtype: torch.dtype, mode: str) -> int:
    """Rough peak working set, used to skip runs that cannot fit instead of being OOM-killed."""
    n, c, h, w, k, g, s = case[1:]
    elt = torch.empty((), dtype=dtype).element_size()
    out = n * c * h * s * w * s
    if impl == "unfold":
        cols = out * k * k  # the (N, C*k*k, Ho*Wo) column tensor
        est = cols + 2 * out if mode == "fwd" else 3 * cols + 4 * out
    else:
        est = 3 * out if mode == "fwd" else 6 * out
    return elt * est + minimal_bytes(case, dtype, mode)


def available_bytes(device: str) -> int:
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def _call(fn: Callable, case: Case, ins: dict[str, Any], mode: str) -> None:
    if mode == "fwd":
        with torch.no_grad():
            fn(ins["feat"], ins["masks"], case.k, case.g, case.s)
        return
    out = fn(ins["feat"], ins["masks"], case.k, case.g, case.s)
    torch.autograd.grad(out, (ins["feat"], ins["masks"]), ins["grad_out"])


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def time_call(
    fn: Callable,
    case: Case,
    ins: dict[str, Any],
    mode: str,
    device: str,
    *,
    reps: int,
    min_time_s: float,
    budget_s: float,
) -> dict[str, Any]:
    """Median wall time of one call; CUDA events on GPU, perf_counter on CPU."""
    t0 = time.perf_counter()
    _call(fn, case, ins, mode)  # warm-up: compiles kernels, fills caches
    _sync(device)
    first = time.perf_counter() - t0
    if first > budget_s:
        return {"status": f"skipped (one call took {first:.1f} s > budget {budget_s:.0f} s)"}
    if device == "cuda":
        for _ in range(2):
            _call(fn, case, ins, mode)
        torch.cuda.synchronize()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start < min_time_s and len(times) < 200):
        if device == "cuda":
            ev0 = torch.cuda.Event(enable_timing=True)
            ev1 = torch.cuda.Event(enable_timing=True)
            ev0.record()
            _call(fn, case, ins, mode)
            ev1.record()
            ev1.synchronize()
            times.append(ev0.elapsed_time(ev1) / 1e3)
        else:
            t = time.perf_counter()
            _call(fn, case, ins, mode)
            times.append(time.perf_counter() - t)
        if time.perf_counter() - start > 3 * budget_s:
            break
    return {
        "status": "ok",
        "median_ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "reps": len(times),
    }


def gpu_peak_bytes(fn: Callable, case: Case, ins: dict[str, Any], mode: str) -> int:
    """Peak extra bytes from the torch caching allocator during one call."""
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _call(fn, case, ins, mode)
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def copy_bandwidth(device: str, nbytes: int) -> float:
    """Device-to-device copy bandwidth in GB/s (read + write counted) for the %-of-peak column."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    _sync(device)
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


# ---------------------------------------------------------------- CPU memory (child process)

_HWM_NOTE = (
    "CPU peak memory: VmHWM minus VmRSS in a child process per shape, high-water mark reset "
    "through /proc/self/clear_refs before each call, glibc mmap threshold pinned so freed "
    "buffers return to the OS"
)


def _proc_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_kib("VmHWM") <= _proc_kib("VmRSS") + 1024
    except (OSError, KeyError):
        return False


def _memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: peak RSS delta of each (dtype, impl, mode) of one case."""
    case = Case(*spec["case"])
    impls = _implementations("cpu")[0]
    out: dict[str, Any] = {}
    if not _reset_hwm():
        return {"error": "VmHWM reset via /proc/self/clear_refs not available"}
    # One-time allocations (thread pools, dispatch caches) are not the op's: pay them up front
    # on a tiny case so each measured call below can run once.
    tiny = Case("tiny", 1, case.g, 3, 3, case.k, case.g, case.s)
    for dname, impl, mode in {(d, i, m) for d, i, m in spec["runs"]}:
        ins = make_inputs(tiny, DTYPES[dname], "cpu")
        ins["feat"].requires_grad_(mode != "fwd")
        ins["masks"].requires_grad_(mode != "fwd")
        try:
            _call(impls[impl], tiny, ins, mode)
        except Exception:  # reported by the measured call below
            pass
    for dname, impl, mode in spec["runs"]:
        dtype = DTYPES[dname]
        ins = make_inputs(case, dtype, "cpu")
        if mode == "fwd+bwd":
            ins["feat"].requires_grad_(True)
            ins["masks"].requires_grad_(True)
        fn = impls[impl]
        try:
            gc.collect()
            _reset_hwm()
            base = _proc_kib("VmRSS")
            _call(fn, case, ins, mode)
            peak = _proc_kib("VmHWM")
            out[f"{dname}|{impl}|{mode}"] = max(0, peak - base) * 1024
        except Exception as exc:
            out[f"{dname}|{impl}|{mode}"] = "OOM" if _is_oom(exc) else f"error: {exc}"
        del ins
        gc.collect()
    return out


def cpu_peak_bytes(case: Case, runs: list[tuple[str, str, str]], timeout_s: float) -> dict:
    if not runs:
        return {}
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    package = sys.modules.get("carafe_cupy")
    if package is not None and package.__file__:
        # the child must import the same carafe_cupy, installed or not
        root = str(Path(package.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    spec = json.dumps({"case": list(case), "runs": runs})
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--_memory-child", spec],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"memory child timed out after {timeout_s:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"memory child failed (rc {proc.returncode}): {tail[0]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------- first-call latency (GPU only)


def _first_call_child() -> dict[str, Any]:
    """Runs in a fresh process; CUDA context creation is excluded from the timed part."""
    torch.cuda.init()
    torch.zeros(1, device="cuda").add_(1)
    torch.cuda.synchronize()
    case = Case("first-call", 1, 64, 16, 16, k=5, g=2, s=2)
    t0 = time.perf_counter()
    mod = importlib.import_module("carafe_cupy")
    t_import = time.perf_counter() - t0
    res: dict[str, Any] = {"import_s": t_import}
    for dname in ("fp32", "fp16"):
        ins = make_inputs(case, DTYPES[dname], "cuda")
        ins["feat"].requires_grad_(True)
        ins["masks"].requires_grad_(True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = mod.carafe(ins["feat"], ins["masks"], case.k, case.g, case.s)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        torch.autograd.grad(out, (ins["feat"], ins["masks"]), ins["grad_out"])
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        res[f"{dname}_forward_s"] = t1 - t0
        res[f"{dname}_backward_s"] = t2 - t1
    return res


def first_call_latency(timeout_s: float = 300.0) -> dict[str, Any]:
    """Cold (empty CUPY_CACHE_DIR) and warm (same dir, new process) first-call times."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="carafe-cupy-cache-") as cache:
        env = dict(os.environ, CUPY_CACHE_DIR=cache)
        for label in ("cold", "warm"):
            try:
                proc = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--_first-call-child"],
                    capture_output=True,
                    text=True,
                    timeout=timeout_s,
                    env=env,
                )
                if proc.returncode != 0:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                    out[label] = f"error (rc {proc.returncode}): {tail[0]}"
                else:
                    out[label] = json.loads(proc.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                out[label] = f"timed out after {timeout_s:.0f} s"
        out["cache_files_after_cold_and_warm"] = sum(len(f) for _, _, f in os.walk(cache))
    return out


# --------------------------------------------------------------------------- main driver


def _implementations(device: str) -> tuple[dict[str, Callable], dict[str, str], str]:
    """Callable per implementation that can run on ``device``, and a note per one that can't."""
    base = _load_baselines()
    runnable: dict[str, Callable] = {}
    notes: dict[str, str] = {}
    fn, ver = _import_carafe_cupy()
    if fn is None:
        notes["carafe_cupy"] = ver
    else:
        runnable["carafe_cupy"] = fn
    runnable.update(base.BASELINES)
    for name, got in base.optional_baselines().items():
        if isinstance(got, str):
            notes[name] = got
        elif device != "cuda":
            notes[name] = "CUDA only, not run on CPU"
        else:
            runnable[name] = got
    return runnable, notes, ver


def resolve_device(device: str) -> tuple[str, list[str]]:
    notes: list[str] = []
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda", notes
        notes.append("CUDA not available: GPU part NOT run; benchmarked the CPU path only.")
        return "cpu", notes
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    if device not in ("cpu", "cuda"):
        raise SystemExit(f"unknown device {device!r}")
    return device, notes


def _supports(dtype: torch.dtype, device: str) -> str | None:
    """None if the dtype can be benchmarked on the device, else the reason why not."""
    if device == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return "bf16 not supported by this GPU"
    return None


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
) -> dict[str, Any]:
    """Run the benchmark and write results.md / results.json / PNG plots to ``out_dir``.

    ``out_dir=None`` means ``benchmarks/results/<date>-<device-slug>/``. ``shapes`` takes case
    names (see ``ALL_CASES``) or ``Case`` tuples; ``impls`` restricts the implementations.
    Returns the same dict that is written as JSON.
    """
    t_start = time.perf_counter()
    dev, notes = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    cases = list(QUICK_CASES if quick else FULL_CASES)
    if shapes:
        cases = [ALL_CASES[s] if isinstance(s, str) else Case(*s) for s in shapes]
    if dtypes:
        dnames = list(dtypes)
    elif quick and dev == "cpu":
        # fp16 on CPU is not a deployment target and slow there; keep --quick under a minute.
        dnames = ["fp32", "bf16"]
        notes.append("--quick on CPU: fp16 left out (run without --quick or pass --dtypes).")
    else:
        dnames = ["fp32", "bf16", "fp16"]
    for d in dnames:
        if d not in DTYPES:
            raise ValueError(f"unknown dtype {d!r}; choose from {sorted(DTYPES)}")
    if total_budget_s is None and quick:
        total_budget_s = 45.0  # --quick must stay short even on a loaded 2-core machine
    budget = (
        budget_s if budget_s is not None else (5.0 if quick else (10.0 if dev == "cuda" else 30))
    )
    runnable, impl_notes, carafe_ver = _implementations(dev)
    if impls:
        runnable = {k: v for k, v in runnable.items() if k in impls}
    order = [i for i in IMPL_ORDER if i in runnable] + [i for i in runnable if i not in IMPL_ORDER]

    name = device_name(dev)
    if out_dir is None:
        out_dir = RESULTS_ROOT / f"{_dt.date.today().isoformat()}-{slugify(name)}"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    meta: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "device": dev,
        "device_name": name,
        "versions": versions(carafe_ver),
        "quick": quick,
        "torch_threads": torch.get_num_threads(),
        "budget_s": budget,
        "total_budget_s": total_budget_s,
        "timing": "CUDA events, median after warm-up" if dev == "cuda" else "perf_counter median",
        "memory": (
            "torch.cuda.max_memory_allocated after reset, minus allocated before the call "
            "(torch allocator only)"
            if dev == "cuda"
            else _HWM_NOTE
        ),
        "gbps": "minimal bytes: fwd = feat+masks+out; fwd+bwd adds grad_out+grad_feat+grad_masks",
        "notes": notes,
    }
    if carafe_ver.startswith("not importable"):
        notes.append(f"carafe_cupy {carafe_ver}: speed-ups not computed.")
    copy_nbytes = (64 if quick else 256) * MiB
    copy_bw = copy_bandwidth(dev, copy_nbytes)

    results: list[dict[str, Any]] = []
    total = len(cases) * len(dnames) * len(order)
    bar = _Progress(total, progress)
    reps = 3 if quick else 20
    min_time = 0.0 if quick else 0.5
    avail = available_bytes(dev)
    for case in cases:
        mem_runs: list[tuple[str, str, str]] = []
        for dname in dnames:
            dtype = DTYPES[dname]
            why = _supports(dtype, dev)
            ins_fwd = make_inputs(case, dtype, dev)
            ins_bwd = {k: v.detach().clone() for k, v in ins_fwd.items()}
            ins_bwd["feat"].requires_grad_(True)
            ins_bwd["masks"].requires_grad_(True)
            for impl in order:
                bar.step(f"{case.name} {dname} {impl}")
                for mode in MODES:
                    row: dict[str, Any] = {
                        "case": case.name,
                        "shape": case.label,
                        "dtype": dname,
                        "impl": impl,
                        "mode": mode,
                        "bytes_min": minimal_bytes(case, dtype, mode),
                    }
                    results.append(row)
                    need = estimate_bytes(impl, case, dtype, mode)
                    if why:
                        row["status"] = f"skipped ({why})"
                        continue
                    if total_budget_s and time.perf_counter() - t_start > total_budget_s:
                        row["status"] = f"skipped (whole-run budget {total_budget_s:.0f} s spent)"
                        continue
                    if need > 0.8 * avail:
                        row["status"] = (
                            f"skipped (needs ~{need / 2**30:.1f} GiB, "
                            f"{avail / 2**30:.1f} GiB available)"
                        )
                        continue
                    ins = ins_fwd if mode == "fwd" else ins_bwd
                    try:
                        row.update(
                            time_call(
                                runnable[impl],
                                case,
                                ins,
                                mode,
                                dev,
                                reps=reps,
                                min_time_s=min_time,
                                budget_s=budget,
                            )
                        )
                        if row["status"] == "ok" and dev == "cuda":
                            row["peak_mem_bytes"] = gpu_peak_bytes(runnable[impl], case, ins, mode)
                    except Exception as exc:
                        row["status"] = "OOM" if _is_oom(exc) else f"error: {_short(exc)}"
                        if dev == "cuda":
                            torch.cuda.empty_cache()
                    if row["status"] == "ok":
                        sec = row["median_ms"] / 1e3
                        row["gbps"] = row["bytes_min"] / sec / 1e9
                        row["pct_copy_bw"] = 100 * row["gbps"] / copy_bw
                        if dev == "cpu":
                            mem_runs.append((dname, impl, mode))
            del ins_fwd, ins_bwd
            gc.collect()
        if dev == "cpu" and measure_memory:
            left = total_budget_s - (time.perf_counter() - t_start) if total_budget_s else None
            timeout = max(120.0, 20 * budget) if left is None else max(20.0, left + 15.0)
            mem = cpu_peak_bytes(case, mem_runs, timeout_s=timeout)
            for row in results:
                if row["case"] != case.name or row.get("status") != "ok":
                    continue
                key = f"{row['dtype']}|{row['impl']}|{row['mode']}"
                val = mem.get(key, mem.get("error", "n/a"))
                row["peak_mem_bytes"] = val if isinstance(val, int) else None
                if not isinstance(val, int):
                    row["peak_mem_note"] = str(val)
        if dev == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    _add_speedups(results)

    report: dict[str, Any] = {
        "schema": 1,
        "meta": meta,
        "copy_bandwidth_gbps": copy_bw,
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
    md = render_markdown(report)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / "results.md").write_text(md)
    report["plots"] = make_plots(report, out_dir) if plot else ["plot disabled"]
    # Rewrite with plot info so the JSON on disk names the PNGs it belongs with.
    (out_dir / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    report["out_dir"] = str(out_dir)
    report["meta"]["wall_s"] = round(time.perf_counter() - t_start, 1)
    if verbose:
        print(md)
        for p in report["plots"]:
            print(f"plot: {p}")
        print(f"results written to {out_dir}")
    return report


def carafepack_fused_vs_unfused(
    cases: list[Case], dtypes: list[str], device: str, reps: int = 20
) -> list[dict[str, Any]] | str:
    """CARAFEPack with the fused normaliser against pixel_shuffle + softmax + carafe.

    The fused path exists only in the CUDA kernels, so this runs on a GPU.
    """
    if device != "cuda":
        return "not run: the fused normaliser exists only in the CUDA kernels"
    import carafe_cupy

    rows = []
    for case in cases:
        for dname in dtypes:
            dtype = DTYPES[dname]
            torch.manual_seed(0)
            pack = carafe_cupy.CARAFEPack(case.c, case.s, up_kernel=case.k, up_group=case.g)
            pack = pack.to(device=device, dtype=dtype)
            x = torch.randn(case.n, case.c, case.h, case.w, device=device, dtype=dtype)
            x.requires_grad_(True)
            for fused in (True, False):
                pack.fuse_normalizer = fused
                for mode in ("fwd", "fwd+bwd"):
                    row = {"case": case.name, "dtype": dname, "fused": fused, "mode": mode}
                    try:
                        for _ in range(3):
                            _pack_step(pack, x, mode)
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                        base = torch.cuda.memory_allocated()
                        times = []
                        for _ in range(reps):
                            start = torch.cuda.Event(enable_timing=True)
                            end = torch.cuda.Event(enable_timing=True)
                            start.record()
                            _pack_step(pack, x, mode)
                            end.record()
                            end.synchronize()
                            times.append(start.elapsed_time(end))
                        row["median_ms"] = statistics.median(times)
                        row["peak_mem_bytes"] = torch.cuda.max_memory_allocated() - base
                        row["status"] = "ok"
                    except Exception as exc:  # recorded, the run goes on
                        row["status"] = "OOM" if _is_oom(exc) else f"error: {_short(exc)}"
                    rows.append(row)
                    x.grad = None
                    pack.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    return rows


def _pack_step(pack: Any, x: torch.Tensor, mode: str) -> None:
    if mode == "fwd":
        with torch.no_grad():
            pack(x)
    else:
        pack(x).sum().backward()


def render_carafepack(rows: list[dict[str, Any]] | str) -> list[str]:
    lines = ["", "CARAFEPack, fused normaliser vs pixel_shuffle + softmax + carafe:", ""]
    if isinstance(rows, str):
        return lines + [f"- {rows}"]
    lines += [
        "| shape | dtype | mode | fused ms | unfused ms | speed-up | fused MiB | unfused MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    keyed = {(r["case"], r["dtype"], r["mode"], r["fused"]): r for r in rows}
    for case, dname, mode, fused in keyed:
        if not fused:
            continue
        a, b = keyed[(case, dname, mode, True)], keyed.get((case, dname, mode, False), {})
        if a.get("status") != "ok" or b.get("status") != "ok":
            lines.append(
                f"| {case} | {dname} | {mode} | {a.get('status')} | {b.get('status')} | - | - | - |"
            )
            continue
        lines.append(
            f"| {case} | {dname} | {mode} | {a['median_ms']:.3f} | {b['median_ms']:.3f} | "
            f"{b['median_ms'] / a['median_ms']:.2f} | {a['peak_mem_bytes'] / 2**20:.1f} | "
            f"{b['peak_mem_bytes'] / 2**20:.1f} |"
        )
    return lines


def _short(exc: BaseException, limit: int = 160) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _add_speedups(results: list[dict[str, Any]]) -> None:
    """speedup_vs_carafe_cupy = baseline time / carafe_cupy time, per (case, dtype, mode)."""
    ref = {
        (r["case"], r["dtype"], r["mode"]): r["median_ms"]
        for r in results
        if r["impl"] == "carafe_cupy" and r.get("status") == "ok"
    }
    for r in results:
        key = (r["case"], r["dtype"], r["mode"])
        if r["impl"] != "carafe_cupy" and r.get("status") == "ok" and key in ref:
            r["carafe_cupy_speedup"] = r["median_ms"] / ref[key]


# --------------------------------------------------------------------------- reporting


def _fmt_ms(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    if r.get("status") != "ok":
        s = r.get("status", "?")
        return "OOM" if s == "OOM" else ("skipped" if s.startswith("skipped") else "error")
    return f"{r['median_ms']:.3f}"


def _fmt_mem(r: dict[str, Any] | None) -> str:
    if r is None or r.get("status") != "ok" or r.get("peak_mem_bytes") is None:
        return "-"
    return f"{r['peak_mem_bytes'] / MiB:.1f}"


def _fmt(r: dict[str, Any] | None, key: str, spec: str, suffix: str = "") -> str:
    if r is None or r.get(key) is None:
        return "-"
    return format(r[key], spec) + suffix


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    v = meta["versions"]
    lines = [
        f"# CARAFE benchmark: {meta['device_name']} ({meta['device']})",
        "",
        f"- date: {meta['date']}  commit: `{meta['commit']}`",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- torch threads: {meta['torch_threads']}; timing: {meta['timing']}",
        f"- copy bandwidth ({report['copy_bytes'] // MiB} MiB `.copy_()`): "
        f"{report['copy_bandwidth_gbps']:.1f} GB/s",
        f"- memory: {meta['memory']}",
        f"- GB/s from {meta['gbps']}",
    ]
    for name, status in report["implementations"].items():
        if status != "ok":
            lines.append(f"- {name}: {status}")
    for note in meta["notes"]:
        lines.append(f"- NOTE: {note}")
    lines += [
        "",
        "Times are medians in ms; memory is peak extra MiB; `x cupy` is how many times faster "
        "carafe_cupy is than that implementation (fwd / fwd+bwd).",
        "",
        "| shape | dtype | impl | fwd ms | fwd+bwd ms | fwd MiB | fwd+bwd MiB | fwd GB/s "
        "| fwd % copy | f+b GB/s | f+b % copy | x cupy |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    index = {(r["case"], r["dtype"], r["impl"], r["mode"]): r for r in report["results"]}
    seen: list[tuple[str, str, str]] = []
    for r in report["results"]:
        key = (r["case"], r["dtype"], r["impl"])
        if key not in seen:
            seen.append(key)
    for case, dtype, impl in seen:
        f = index.get((case, dtype, impl, "fwd"))
        b = index.get((case, dtype, impl, "fwd+bwd"))
        sp = "-"
        if impl != "carafe_cupy":
            sp = (
                f"{_fmt(f, 'carafe_cupy_speedup', '.2f')} / {_fmt(b, 'carafe_cupy_speedup', '.2f')}"
            )
        lines.append(
            f"| {case} | {dtype} | {impl} | {_fmt_ms(f)} | {_fmt_ms(b)} | {_fmt_mem(f)} "
            f"| {_fmt_mem(b)} | {_fmt(f, 'gbps', '.1f')} | {_fmt(f, 'pct_copy_bw', '.1f', '%')} "
            f"| {_fmt(b, 'gbps', '.1f')} | {_fmt(b, 'pct_copy_bw', '.1f', '%')} | {sp} |"
        )
    problems = [
        r for r in report["results"] if r.get("status") not in ("ok", None) or "peak_mem_note" in r
    ]
    if problems:
        lines += ["", "Not measured:", ""]
        for r in problems:
            what = r.get("status") if r.get("status") != "ok" else r.get("peak_mem_note")
            lines.append(f"- {r['case']} {r['dtype']} {r['impl']} {r['mode']}: {what}")
    fc = report["first_call"]
    lines += ["", "First-call latency (carafe_cupy):", ""]
    if isinstance(fc, dict):
        for label in ("cold", "warm"):
            val = fc.get(label)
            if isinstance(val, dict):
                parts = ", ".join(f"{k} {t * 1e3:.1f} ms" for k, t in val.items())
                lines.append(
                    f"- {label} ({'empty' if label == 'cold' else 'filled'} cache): {parts}"
                )
            else:
                lines.append(f"- {label}: {val}")
    else:
        lines.append(f"- {fc}")
    lines += render_carafepack(report.get("carafepack_fused", "not run"))
    return "\n".join(lines) + "\n"


def make_plots(report: dict[str, Any], out_dir: Path) -> list[str]:
    """Time and peak memory per shape per implementation, one PNG per dtype."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["matplotlib not installed: plot skipped"]
    made: list[str] = []
    res = report["results"]
    cases = list(report["cases"])
    for dtype in report["dtypes"]:
        impls = [i for i in report["implementations"] if report["implementations"][i] == "ok"]
        fig, axes = plt.subplots(2, 2, figsize=(max(8, 1.4 * len(cases) + 4), 8), squeeze=False)
        width = 0.8 / max(len(impls), 1)
        any_data = False
        for col, mode in enumerate(MODES):
            for row_i, (key, ylabel, scale) in enumerate(
                (("median_ms", "median time (ms)", 1.0), ("peak_mem_bytes", "peak MiB", MiB))
            ):
                ax = axes[row_i][col]
                for j, impl in enumerate(impls):
                    xs, ys = [], []
                    for x, case in enumerate(cases):
                        for r in res:
                            if (r["case"], r["dtype"], r["impl"], r["mode"]) == (
                                case,
                                dtype,
                                impl,
                                mode,
                            ) and isinstance(r.get(key), (int, float)):
                                xs.append(x + (j - (len(impls) - 1) / 2) * width)
                                ys.append(max(r[key] / scale, 1e-6))
                    if ys:
                        any_data = True
                        ax.bar(xs, ys, width=width, label=impl)
                ax.set_yscale("log")
                ax.set_title(f"{mode} {dtype}: {ylabel}")
                ax.set_xticks(range(len(cases)))
                ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=8)
                ax.set_ylabel(ylabel)
                ax.legend(fontsize=8)
        if not any_data:
            plt.close(fig)
            continue
        fig.suptitle(f"CARAFE {report['meta']['device_name']} ({report['meta']['commit'][:12]})")
        fig.tight_layout()
        path = out_dir / f"plot_{dtype}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(str(path))
    return made


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, finishes in under a minute")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtypes", default=None, help="comma list of fp32,bf16,fp16")
    p.add_argument(
        "--shapes", default=None, help="comma list of case names: " + ",".join(ALL_CASES)
    )
    p.add_argument("--impls", default=None, help="comma list, e.g. carafe_cupy,shift")
    p.add_argument("--out", type=Path, default=None, help="results directory")
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--budget", type=float, default=None, help="seconds allowed for one call")
    p.add_argument("--no-memory", action="store_true", help="skip the CPU memory child runs")
    p.add_argument("--no-first-call", action="store_true", help="skip cold/warm compile timing")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    p.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    p.add_argument(
        "--_first-call-child", dest="first_call_child", action="store_true", help=argparse.SUPPRESS
    )
    return p


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.memory_child:
        print(json.dumps(_memory_child(json.loads(args.memory_child))))
        return 0
    if args.first_call_child:
        print(json.dumps(_first_call_child()))
        return 0
    shapes = _split(args.shapes)
    for s in shapes or []:
        if s not in ALL_CASES:
            print(f"unknown shape {s!r}; choose from {', '.join(ALL_CASES)}", file=sys.stderr)
            return 2
    report = run_benchmark(
        args.quick,
        args.device,
        args.out,
        args.plot,
        dtypes=_split(args.dtypes),
        shapes=shapes,
        impls=_split(args.impls),
        budget_s=args.budget,
        measure_memory=not args.no_memory,
        first_call=not args.no_first_call,
        progress=not args.no_progress,
        threads=args.threads,
    )
    bad = [r for r in report["results"] if str(r.get("status", "")).startswith("error")]
    return 1 if bad and any(r["impl"] == "carafe_cupy" for r in bad) else 0


if __name__ == "__main__":
    sys.exit(main())
