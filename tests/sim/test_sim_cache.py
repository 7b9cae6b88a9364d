"""Compile cache: disk reuse across processes, thread safety, damaged caches."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

from carafe_cupy._sim import SimRuntime, SimulatorError

ROOT = Path(__file__).resolve().parents[2]

ADD_SRC = r"""
extern "C" __global__ void add1(float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += 1.f;
}
"""

CHILD = r"""
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from carafe_cupy._sim import SimRuntime
rt = SimRuntime()
x = np.zeros(100, np.float32)
rt.launch("cache_child", sys.argv[2], "add1", (2, 1, 1), (64, 1, 1),
          (np.uint64(x.ctypes.data), np.int32(100)))
assert (x == 1).all()
print("COMPILES", rt.compile_count())
"""


def unique_src() -> str:
    return f"// {uuid.uuid4().hex}\n{ADD_SRC}"


def run_add(rt: SimRuntime, src: str) -> None:
    x = np.zeros(100, np.float32)
    rt.launch(
        "cache_test", src, "add1", (2, 1, 1), (64, 1, 1), (np.uint64(x.ctypes.data), np.int32(100))
    )
    assert (x == 1).all()


def child(src: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), src],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_new_process_hits_disk_cache_and_survives_truncation(fresh_cache: Path) -> None:
    src = unique_src()
    assert "COMPILES 1" in child(src).stdout
    assert "COMPILES 0" in child(src).stdout
    (so,) = fresh_cache.glob("cache_child-*.so")
    so.write_bytes(so.read_bytes()[:1000])
    proc = child(src)
    assert "COMPILES 1" in proc.stdout
    assert "recompiling" in proc.stderr
    assert "COMPILES 0" in child(src).stdout


def test_concurrent_first_launch_compiles_once(fresh_cache: Path) -> None:
    src = unique_src()
    rt = SimRuntime()
    before = rt.compile_count()
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            run_add(rt, src)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert rt.compile_count() - before == 1


def test_unwritable_cache_dir_still_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CARAFE_CUPY_SIM_CACHE", str(blocker / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_add(SimRuntime(), unique_src())


def test_compiler_from_cxx_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(SimulatorError, match=r"(?s)/nonexistent/g\+\+.*CXX"):
        run_add(SimRuntime(), unique_src())


def test_no_compiler_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SimulatorError, match=r"(?s)no C\+\+ compiler found.*Install"):
        run_add(SimRuntime(), unique_src())
