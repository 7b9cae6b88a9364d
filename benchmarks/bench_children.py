"""Measurements that need a fresh process: CPU peak memory and first-call latency; and the
GPU's allocator peak."""

from __future__ import annotations

import gc
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from bench_cases import DTYPES, HERE, Case, implementations, is_oom, make_inputs
from bench_timing import call

SCRIPT = HERE / "bench_carafe.py"
HWM_NOTE = (
    "CPU peak memory: VmHWM minus VmRSS in a child process per shape, high-water mark reset "
    "through /proc/self/clear_refs before each call, glibc mmap threshold pinned so freed "
    "buffers return to the OS"
)


def gpu_peak_bytes(fn: Callable, case: Case, ins: dict[str, Any], mode: str) -> int:
    """Peak extra bytes from the torch caching allocator during one call."""
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    call(fn, case, ins, mode)
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


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


def memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: peak RSS delta of each (dtype, impl, mode) of one case."""
    case = Case(*spec["case"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])  # as the timed calls ran
    impls = implementations("cpu")[0]
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
            call(impls[impl], tiny, ins, mode)
        except Exception:  # reported by the measured call below
            pass
    # What is alive now (torch, its modules) stays alive: keep the collections below from
    # walking it each time (over 0.1 s a collection otherwise).
    gc.collect()
    gc.freeze()
    for dname, impl, mode in spec["runs"]:
        ins = make_inputs(case, DTYPES[dname], "cpu")
        if mode == "fwd+bwd":
            ins["feat"].requires_grad_(True)
            ins["masks"].requires_grad_(True)
        try:
            gc.collect()
            _reset_hwm()
            base = _proc_kib("VmRSS")
            call(impls[impl], case, ins, mode)
            peak = _proc_kib("VmHWM")
            out[f"{dname}|{impl}|{mode}"] = max(0, peak - base) * 1024
        except Exception as exc:
            out[f"{dname}|{impl}|{mode}"] = "OOM" if is_oom(exc) else f"error: {exc}"
        del ins
        gc.collect()
    return out


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    package = sys.modules.get("carafe_cupy")
    if package is not None and package.__file__:
        # the child must import the same carafe_cupy, installed or not
        root = str(Path(package.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _run_child(args: list[str], env: dict[str, str], timeout_s: float) -> dict[str, Any] | str:
    """The JSON a child prints last, or what went wrong."""
    try:
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return f"child timed out after {timeout_s:.0f} s"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return f"child failed (rc {proc.returncode}): {tail[0]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_peak_bytes(
    case: Case, runs: list[tuple[str, str, str]], timeout_s: float, threads: int | None = None
) -> dict:
    if not runs:
        return {}
    env = _child_env(MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    spec = json.dumps({"case": list(case), "runs": runs, "threads": threads})
    got = _run_child(["--_memory-child", spec], env, timeout_s)
    return got if isinstance(got, dict) else {"error": f"memory {got}"}


def first_call_child() -> dict[str, Any]:
    """Runs in a fresh process; CUDA context creation is excluded from the timed part."""
    torch.cuda.init()
    torch.zeros(1, device="cuda").add_(1)
    torch.cuda.synchronize()
    case = Case("first-call", 1, 64, 16, 16, k=5, g=2, s=2)
    t0 = time.perf_counter()
    mod = importlib.import_module("carafe_cupy")
    res: dict[str, Any] = {"import_s": time.perf_counter() - t0}
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
        res[f"{dname}_forward_s"] = t1 - t0
        res[f"{dname}_backward_s"] = time.perf_counter() - t1
    return res


def first_call_latency(timeout_s: float = 300.0) -> dict[str, Any]:
    """Cold (empty kernel caches) and warm (same caches, new process) first-call times."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="carafe-cupy-cache-") as cache:
        env = _child_env(CUPY_CACHE_DIR=cache, CARAFE_CUPY_KERNEL_CACHE=cache)
        for label in ("cold", "warm"):
            out[label] = _run_child(["--_first-call-child"], env, timeout_s)
        out["cache_files_after_cold_and_warm"] = sum(len(f) for _, _, f in os.walk(cache))
    return out
