"""Compile cache: disk reuse across processes, thread safety, damaged caches
(truncated, folders in place of files, bad modules rebuilt in the same process),
a relative cache folder, private modes under umask 000."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import threading
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

from carafe_cupy._sim import SimRuntime, SimulatorError, verify
from carafe_cupy._sim import build as _build
from carafe_cupy._sim import cache as _cache

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


def module_file(directory: Path, src: str, name: str = "cache_test") -> Path:
    key = _build.build_spec(name, src, False).key
    return directory / _cache.module_file_name(name, key)


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith((".tmp-", ".load-"))]


def test_a_truncated_module_whose_digest_matches_is_rebuilt_not_mapped(fresh_cache: Path) -> None:
    # dlopen would map pages past the end of the file: a bus error, not an error
    src = unique_src()
    assert "COMPILES 1" in child(src).stdout
    (so,) = fresh_cache.glob("cache_child-*.so")
    data = so.read_bytes()[: so.stat().st_size // 2]
    so.write_bytes(data)
    so.with_name(so.name + ".sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
    assert verify.elf_problem(data) is not None
    proc = child(src)  # a bus error would fail here
    assert "COMPILES 1" in proc.stdout and "truncated" in proc.stderr
    assert verify.elf_problem(so.read_bytes()) is None


def test_the_elf_check_accepts_whole_modules_only(fresh_cache: Path) -> None:
    src = unique_src()
    run_add(SimRuntime(), src)
    image = module_file(fresh_cache, src).read_bytes()
    assert verify.elf_problem(image) is None
    for cut in (10, 64, 1000, len(image) // 2, len(image) - 1):
        assert verify.elf_problem(image[:cut]) is not None, cut
    assert verify.elf_problem(b"\x7fELF" + bytes(60)) is not None


@pytest.mark.parametrize("which", [".so", ".so.sha256"])
def test_a_folder_in_place_of_a_cache_file_costs_a_warning_not_every_call(
    fresh_cache: Path, which: str
) -> None:
    src = unique_src()
    target = module_file(fresh_cache, src)
    blocker = target.with_name(target.name[: -len(".so")] + which)
    blocker.mkdir()
    rt = SimRuntime()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_add(rt, src)
    assert any("is a folder where a build goes; remove it" in str(w.message) for w in caught)
    run_add(rt, src)
    assert blocker.is_dir() and leftovers(fresh_cache) == []


def test_a_bad_module_is_rebuilt_and_loaded_in_the_same_process(
    fresh_cache: Path, tmp_path: Path
) -> None:
    # a well-formed library of this user's that is no simulator module: dlopen
    # keeps it loaded under the module's path, so the rebuild loads under another
    src = unique_src()
    target = module_file(fresh_cache, src)
    other = tmp_path / "other.cpp"
    other.write_text('extern "C" int not_a_simulator_module() { return 1; }\n')
    subprocess.run(["g++", "-shared", "-fPIC", str(other), "-o", str(target)], check=True)
    target.chmod(0o600)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    target.with_name(target.name + ".sha256").write_text(digest)
    rt = SimRuntime()
    before = rt.compile_count()
    with pytest.warns(RuntimeWarning, match="not a simulator module.*recompiling"):
        run_add(rt, src)
    assert rt.compile_count() - before == 1
    assert leftovers(fresh_cache) == []


def test_a_relative_cache_folder_works(
    sim_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARAFE_CUPY_SIM_CACHE", "relative/cache")
    (tmp_path / "relative").mkdir()
    shutil.copytree(sim_cache, tmp_path / "relative" / "cache")
    src = unique_src()
    run_add(SimRuntime(), src)
    assert module_file(tmp_path / "relative" / "cache", src).is_file()


def test_everything_built_is_private_under_umask_000(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (D) a new default cache, and the module, digest and scheduler object in it
    monkeypatch.delenv("CARAFE_CUPY_SIM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    old = os.umask(0)
    try:
        run_add(SimRuntime(), unique_src())
    finally:
        os.umask(old)
    cache = tmp_path / "home" / ".cache" / "carafe_cupy" / "sim"
    for folder in (cache, *list(cache.parents)[:3]):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    files = {p.suffix: stat.S_IMODE(p.stat().st_mode) for p in cache.iterdir()}
    assert files == {".so": 0o600, ".sha256": 0o600, ".o": 0o600}
