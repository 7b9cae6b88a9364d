"""AddressSanitizer mode catches out-of-bounds accesses in kernels."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

ASAN_SRC = r"""
extern "C" __global__ void reduce_ok(const float* x, float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  for (int st = 32; st > 0; st >>= 1) {
    if (threadIdx.x < st) s[threadIdx.x] += s[threadIdx.x + st];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = s[0];
}

extern "C" __global__ void read_past_end(const float* x, float* y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i + 1];  // OOB_LINE
}
"""

CHILD = r"""
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from carafe_cupy._sim import SimRuntime
src = sys.argv[2]
rt = SimRuntime("reverse")
x = np.ones(64, np.float32)
out = np.zeros(1, np.float32)
rt.launch("asan_mod", src, "reduce_ok", (1, 1, 1), (64, 1, 1),
          (np.uint64(x.ctypes.data), np.uint64(out.ctypes.data)))
assert out[0] == 64, out
print("BARRIERS OK", flush=True)
n = 4096
a = np.ones(n, np.float32)
b = np.zeros(n, np.float32)
rt.launch("asan_mod", src, "read_past_end", (n // 256, 1, 1), (256, 1, 1),
          (np.uint64(a.ctypes.data), np.uint64(b.ctypes.data), np.int32(n)))
print("NOT CAUGHT", flush=True)
"""


def libasan() -> str | None:
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
    if not cxx:
        return None
    out = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = out.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def test_asan_reports_out_of_bounds_read(sim_cache: Path) -> None:
    lib = libasan()
    if lib is None:
        pytest.skip("libasan.so not found for the C++ compiler")
    env = os.environ.copy()
    env.update(
        LD_PRELOAD=lib,
        ASAN_OPTIONS="detect_leaks=0",
        CARAFE_CUPY_SIM_ASAN="1",
        CARAFE_CUPY_SIM_CACHE=str(sim_cache),
    )
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), ASAN_SRC],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert "BARRIERS OK" in proc.stdout, proc.stderr[-4000:]
    assert proc.returncode != 0
    assert "NOT CAUGHT" not in proc.stdout
    assert "heap-buffer-overflow" in proc.stderr
    line = next(n for n, t in enumerate(ASAN_SRC.splitlines(), 1) if "OOB_LINE" in t)
    assert f"asan_mod.cu:{line}" in proc.stderr, proc.stderr[-4000:]


def test_asan_without_preload_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    from carafe_cupy._sim import SimRuntime, SimulatorError, build

    if build.asan_loaded():
        pytest.skip("this process already runs with libasan")
    monkeypatch.setenv("CARAFE_CUPY_SIM_ASAN", "1")
    with pytest.raises(SimulatorError, match="LD_PRELOAD"):
        SimRuntime().launch("asan_mod", ASAN_SRC, "reduce_ok", (1, 1, 1), (64, 1, 1), ())
