"""No planted file in the simulator cache is ever loaded or linked.

Each attack plants code that records when it runs: a shared library whose
constructor creates a marker file, or a working scheduler object with that
constructor added. The planted file carries the exact name and digest a real
build would have, so only the trust rules (``carafe_cupy._core.private_dirs``)
stand between it and the process; a control test switches them off and sees the
marker appear. Files are planted as a second user (uid 65534) with ``setpriv``
where the tests run as root (as CI does); elsewhere those tests skip, and the
rules are checked against faked ``stat`` results in tests/test_cache_trust.py
(helpers: tests/second_user.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
from second_user import folder_of_nobody, needs_second_user, write_as_nobody

from carafe_cupy._core import private_dirs
from carafe_cupy._sim import SimRuntime
from carafe_cupy._sim import build as _build
from carafe_cupy._sim import cache as _cache
from carafe_cupy._sim.common import HERE

ADD_SRC = r"""
extern "C" __global__ void add1(float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += 1.f;
}
"""
MARKER_SRC = r"""
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void carafe_planted_marker(void) {
  int fd = open(MARKER, O_CREAT | O_WRONLY, 0644);
  if (fd >= 0) close(fd);
}
"""


def plant(path: Path, data: bytes, *, by_nobody: bool) -> None:
    """Write ``path`` as the attacker would: with the module's sidecar digest when it is a .so."""
    files = {path: data}
    if path.suffix == ".so":
        files[path.with_name(path.name + ".sha256")] = hashlib.sha256(data).hexdigest().encode()
    for target, content in files.items():
        if by_nobody:
            write_as_nobody(target, content)
        else:
            target.write_bytes(content)


def compile_marker(tmp_path: Path, marker: Path, *, runtime: bool = False) -> bytes:
    """A shared library (or, with ``runtime``, a working scheduler object) that
    creates ``marker`` when it is loaded."""
    source = tmp_path / "planted.cpp"
    body = f'#include "{HERE / "cuda_sim_runtime.cpp"}"\n' if runtime else ""
    source.write_text(body + MARKER_SRC)
    spec = _build.build_spec("trust_probe", ADD_SRC, False)
    out = tmp_path / ("planted.o" if runtime else "planted.so")
    kind = ["-c"] if runtime else ["-shared", "-fPIC"]
    flags = spec.flags if runtime else []
    subprocess.run(
        [*spec.cxx, *flags, *kind, f'-DMARKER="{marker}"', str(source), "-o", str(out)],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


def unique_src() -> str:
    return f"// {uuid.uuid4().hex}\n{ADD_SRC}"


def run_add(src: str, name: str = "trust_test") -> None:
    x = np.zeros(100, np.float32)
    SimRuntime().launch(
        name, src, "add1", (2, 1, 1), (64, 1, 1), (np.uint64(x.ctypes.data), np.int32(100))
    )
    assert (x == 1).all()


def module_path(directory: Path, src: str, name: str = "trust_test") -> Path:
    key = _build.build_spec(name, src, False).key
    return directory / _cache.module_file_name(name, key)


@pytest.fixture(scope="module", autouse=True)
def warm_runtime(sim_cache: Path) -> None:
    """Build the scheduler object once, for fresh_cache and fallback to copy."""
    run_add(unique_src(), "trust_warm_up")


@pytest.fixture
def fallback(sim_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The private folder modules go to instead, seeded with the session's scheduler objects."""
    folder = tmp_path / "fallback"
    folder.mkdir(mode=0o700)
    for obj in sim_cache.glob("*.o"):
        shutil.copy(obj, folder / obj.name)
    monkeypatch.setattr(private_dirs, "fallback_dir", lambda prefix: folder)
    return folder


@pytest.fixture
def shared_tmp():
    """Folders other users can reach, outside pytest's private temporary tree."""
    made: list[Path] = []

    def make(mode: int, *, owner_nobody: bool = False) -> Path:
        if owner_nobody:
            path = folder_of_nobody(mode)
        else:
            path = Path(tempfile.mkdtemp(prefix="carafe_trust_"))
            os.chmod(path, mode)
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def run_warned(src: str) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_add(src)
    return [str(w.message) for w in caught]


@needs_second_user
def test_a_module_planted_in_a_sticky_shared_folder_is_never_loaded(
    tmp_path, fallback, shared_tmp, monkeypatch
):
    # (A) CARAFE_CUPY_SIM_CACHE pointed at a 1777 folder another user planted in
    shared = shared_tmp(0o1777)
    marker = tmp_path / "loaded"
    src = unique_src()
    plant(module_path(shared, src), compile_marker(tmp_path, marker), by_nobody=True)
    monkeypatch.setenv("CARAFE_CUPY_SIM_CACHE", str(shared))
    messages = run_warned(src)
    assert not marker.exists()
    assert any(str(shared) in m and "CARAFE_CUPY_SIM_CACHE" in m for m in messages), messages
    assert module_path(fallback, src).is_file()


@needs_second_user
def test_a_module_planted_in_another_users_folder_is_never_loaded(
    tmp_path, fallback, shared_tmp, monkeypatch
):
    # (B) a folder this user does not own (and, unless root, cannot write)
    theirs = shared_tmp(0o755, owner_nobody=True)
    marker = tmp_path / "loaded"
    src = unique_src()
    plant(module_path(theirs, src), compile_marker(tmp_path, marker), by_nobody=True)
    before = sorted(os.listdir(theirs))
    monkeypatch.setenv("CARAFE_CUPY_SIM_CACHE", str(theirs))
    messages = run_warned(src)
    assert not marker.exists()
    assert any("is owned by uid 65534" in m for m in messages), messages
    assert sorted(os.listdir(theirs)) == before  # nothing read there is used, nothing written


@needs_second_user
def test_a_planted_runtime_object_is_never_linked(tmp_path, fresh_cache):
    # (C) a working scheduler object with the planted constructor, under the exact
    # name the build links, owned by another user in this user's folder
    marker = tmp_path / "loaded"
    src = unique_src()
    spec = _build.build_spec("trust_test", src, False)
    (runtime_object,) = _build.runtime_objects(fresh_cache, spec, False)
    runtime_object.unlink(missing_ok=True)
    plant(runtime_object, compile_marker(tmp_path, marker, runtime=True), by_nobody=True)
    run_add(src)
    assert not marker.exists()
    assert runtime_object.stat().st_uid == os.geteuid()  # replaced by a fresh build


def test_a_group_writable_runtime_object_is_never_linked(tmp_path, fresh_cache):
    # (C) without a second user: this user's object that others could have rewritten
    marker = tmp_path / "loaded"
    src = unique_src()
    spec = _build.build_spec("trust_test", src, False)
    (runtime_object,) = _build.runtime_objects(fresh_cache, spec, False)
    runtime_object.unlink(missing_ok=True)
    plant(runtime_object, compile_marker(tmp_path, marker, runtime=True), by_nobody=False)
    os.chmod(runtime_object, 0o666)
    run_add(src)
    assert not marker.exists()
    assert not runtime_object.stat().st_mode & 0o022


def test_control_the_planted_runtime_object_runs_when_the_checks_are_off(
    tmp_path, fresh_cache, monkeypatch
):
    # The planted object links and runs: only the trust check keeps it out above.
    marker = tmp_path / "loaded"
    src = unique_src()
    spec = _build.build_spec("trust_test", src, False)
    (runtime_object,) = _build.runtime_objects(fresh_cache, spec, False)
    runtime_object.unlink(missing_ok=True)
    plant(runtime_object, compile_marker(tmp_path, marker, runtime=True), by_nobody=False)
    os.chmod(runtime_object, 0o666)
    monkeypatch.setattr(private_dirs, "trusted_file", lambda path: path.is_file())
    run_add(src)
    assert marker.exists()


def test_control_the_planted_module_runs_when_the_checks_are_off(
    tmp_path, shared_tmp, monkeypatch
):
    # The planted module is well formed and where a build would look: without
    # the folder and owner checks it is loaded, and its code runs.
    shared = shared_tmp(0o1777)
    marker = tmp_path / "loaded"
    src = unique_src()
    plant(module_path(shared, src), compile_marker(tmp_path, marker), by_nobody=False)
    monkeypatch.setattr(private_dirs, "path_problem", lambda folder, **kw: None)
    monkeypatch.setenv("CARAFE_CUPY_SIM_CACHE", str(shared))
    messages = run_warned(src)  # then rebuilt, since it is no simulator module
    assert marker.exists()
    assert any("not a simulator module" in m for m in messages), messages


def test_a_world_writable_cache_folder_of_this_users_is_not_read(
    tmp_path, fallback, shared_tmp, monkeypatch
):
    # (D) a folder an old umask 000 left drwxrwxrwx: this user's, but anyone could plant
    loose = shared_tmp(0o777)
    marker = tmp_path / "loaded"
    src = unique_src()
    plant(module_path(loose, src), compile_marker(tmp_path, marker), by_nobody=False)
    monkeypatch.setenv("CARAFE_CUPY_SIM_CACHE", str(loose))
    messages = run_warned(src)
    assert not marker.exists()
    assert any("writable by group or others" in m and str(loose) in m for m in messages)
    assert module_path(fallback, src).is_file()


def test_a_module_file_of_another_mode_or_a_symlink_is_not_loaded(tmp_path, fresh_cache):
    marker = tmp_path / "loaded"
    src = unique_src()
    target = module_path(fresh_cache, src)
    elsewhere = tmp_path / "elsewhere.so"
    elsewhere.write_bytes(compile_marker(tmp_path, marker))
    target.symlink_to(elsewhere)
    digest = hashlib.sha256(elsewhere.read_bytes()).hexdigest()
    target.with_name(target.name + ".sha256").write_text(digest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_add(src)
    assert not marker.exists()
    assert any("recompiling" in str(w.message) for w in caught)
    assert stat.S_ISREG(target.lstat().st_mode)  # the link was replaced by a real build
