"""The cache trust rules (carafe_cupy._core.private_dirs) and the caches that use
them besides the simulator's (tests/sim/test_sim_cache_trust.py): the kernel binary
cache and CuPy's kernel cache folder.

The rules are checked on faked ``stat`` results, so every case runs as any user;
files of a second user are planted with ``setpriv`` where the tests run as root.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from fake_cuda import FakeNvrtc
from second_user import NOBODY, folder_of_nobody, needs_second_user, write_as_nobody

from carafe_cupy._core import private_dirs
from carafe_cupy._runtime import binaries as _binaries
from carafe_cupy._runtime import cupy_runtime as _cupy_runtime

ROOT = Path(__file__).resolve().parents[1]
USER = 1000
DIR, FILE, LINK = stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK


def status(kind: int, mode: int, uid: int) -> os.stat_result:
    return os.stat_result((kind | mode, 1, 1, 1, uid, uid, 0, 0, 0, 0))


def faked(tree: dict[str, os.stat_result]):
    def lstat(path: str) -> os.stat_result:
        if path not in tree:
            raise FileNotFoundError(path)
        return tree[path]

    return lstat


SYSTEM = {"/": status(DIR, 0o755, 0), "/tmp": status(DIR, 0o1777, 0)}


@pytest.mark.parametrize(
    "tree, problem",
    [
        # a private folder under the sticky, root-owned /tmp: fine
        ({"/tmp/cache": status(DIR, 0o700, USER)}, None),
        # readable by others but writable only by the user: nobody can plant
        ({"/tmp/cache": status(DIR, 0o755, USER)}, None),
        # (A) a shared sticky folder as the cache itself
        ({"/tmp/cache": status(DIR, 0o1777, USER)}, "writable by group or others"),
        # (B) another user's folder, which this user cannot even write
        ({"/tmp/cache": status(DIR, 0o755, 1001)}, "owned by uid 1001"),
        # (D) what umask 000 made of an earlier cache
        ({"/tmp/cache": status(DIR, 0o777, USER)}, "writable by group or others"),
        ({"/tmp/cache": status(DIR, 0o770, USER)}, "writable by group or others"),
        # a symlink where the folder should be
        ({"/tmp/cache": status(LINK, 0o777, USER)}, "not a folder"),
        ({"/tmp/cache": status(FILE, 0o600, USER)}, "not a folder"),
    ],
)
def test_the_cache_folder_itself_must_be_the_users_and_private(tree, problem):
    found = private_dirs.path_problem(
        Path("/tmp/cache"), lstat=faked({**SYSTEM, **tree}), uid=USER
    )
    assert (found is None) if problem is None else (problem in found), found


@pytest.mark.parametrize(
    "parent, problem",
    [
        (status(DIR, 0o755, USER), None),
        (status(DIR, 0o755, 0), None),
        (status(DIR, 0o1777, 0), None),  # sticky: nobody can rename the cache away
        (status(DIR, 0o777, 0), "without the sticky bit"),
        (status(DIR, 0o775, USER), "without the sticky bit"),
        (status(DIR, 0o755, 1001), "neither this user"),
        (status(LINK, 0o777, USER), "not a folder"),
    ],
)
def test_every_folder_above_it_must_be_safe(parent, problem):
    tree = {**SYSTEM, "/tmp/up": parent, "/tmp/up/cache": status(DIR, 0o700, USER)}
    found = private_dirs.path_problem(Path("/tmp/up/cache"), lstat=faked(tree), uid=USER)
    assert (found is None) if problem is None else (problem in found and "/tmp/up" in found)


@pytest.mark.parametrize(
    "file, problem",
    [
        (status(FILE, 0o600, USER), None),
        (status(FILE, 0o644, USER), None),
        (status(FILE, 0o600, 1001), "owned by uid 1001"),  # planted by another user
        (status(FILE, 0o600, 0), "owned by uid 0"),
        (status(FILE, 0o666, USER), "writable by group or others"),
        (status(FILE, 0o620, USER), "writable by group or others"),
        (status(LINK, 0o777, USER), "not a regular file"),
        (status(DIR, 0o700, USER), "not a regular file"),
    ],
)
def test_only_the_users_own_regular_files_are_loaded(file, problem):
    found = private_dirs.file_problem(file, USER)
    assert (found is None) if problem is None else (problem in found)


def test_new_cache_folders_are_0700_whatever_the_umask(tmp_path):
    # (D) the default cache's folders made with umask 000
    tmp_path.chmod(0o755)
    old = os.umask(0)
    try:
        folder = private_dirs.private_dir(tmp_path / "home" / ".cache" / "sim", "VARIABLE")
    finally:
        os.umask(old)
    for made in (tmp_path / "home", tmp_path / "home" / ".cache", folder):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755  # folders that were there stay


def test_a_refused_folder_names_itself_and_the_variable(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(private_dirs.UntrustedPathError) as error:
        private_dirs.private_dir(shared, "CARAFE_CUPY_SIM_CACHE")
    assert str(shared) in str(error.value) and "CARAFE_CUPY_SIM_CACHE" in str(error.value)
    assert private_dirs.dir_problem(shared, "CARAFE_CUPY_SIM_CACHE") == str(error.value)


def test_nothing_is_created_under_a_folder_others_can_write(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(private_dirs.UntrustedPathError):
        private_dirs.private_dir(shared / "a" / "b", "VARIABLE")
    assert not (shared / "a").exists()


def test_a_relative_folder_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert private_dirs.private_dir("relative/cache", "VARIABLE") == tmp_path / "relative/cache"


def test_a_symlinked_cache_file_is_not_read(tmp_path):
    real = tmp_path / "real"
    real.write_bytes(b"data")
    real.chmod(0o600)
    (tmp_path / "link").symlink_to(real)
    assert private_dirs.read_trusted(real) == b"data"
    with pytest.raises(private_dirs.UntrustedPathError):
        private_dirs.read_trusted(tmp_path / "link")
    with pytest.raises(FileNotFoundError):
        private_dirs.read_trusted(tmp_path / "missing")


FALLBACK_CHILD = """
import os, sys
sys.path.insert(0, sys.argv[1])
import warnings
warnings.simplefilter("ignore")
from carafe_cupy._sim import cache
from carafe_cupy._runtime import cupy_runtime
cupy_runtime._ensure_cupy_cache_dir()
folders = [str(cache._trusted_cache()), os.environ["CUPY_CACHE_DIR"]]
for folder in folders:
    assert os.stat(folder).st_mode & 0o777 == 0o700, folder
    open(os.path.join(folder, "kept-until-exit"), "w").close()
print("\\n".join(folders))
"""


def test_fallback_folders_are_private_and_removed_at_exit(tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    env = {**os.environ, "CARAFE_CUPY_SIM_CACHE": str(blocker), "CUPY_CACHE_DIR": str(blocker)}
    child = subprocess.run(
        [sys.executable, "-c", FALLBACK_CHILD, str(ROOT)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert child.returncode == 0, child.stderr
    folders = child.stdout.split()
    assert [Path(f).name.startswith(p) for f, p in
            zip(folders, ("carafe_cupy_sim-", "carafe_cupy_kernel_cache_"))] == [True, True]
    assert not any(Path(folder).exists() for folder in folders)


# ------------------------------------------------------------ the kernel binary cache


@pytest.fixture
def kernel_cache(tmp_path, monkeypatch):
    folder = tmp_path / "kernels"
    monkeypatch.setenv("CARAFE_CUPY_KERNEL_CACHE", str(folder))
    monkeypatch.setattr(_binaries, "_warned", False)
    _binaries._memory.clear()
    yield folder
    _binaries._memory.clear()


def compile_fake(nvrtc: FakeNvrtc) -> _binaries.Binary:
    return _binaries.module_binary(nvrtc, "trust", "// source\n", _binaries.Target(90))


def plant_binary(path: Path, *, by_nobody: bool) -> None:
    """A well-formed cache entry whose image is the attacker's."""
    scratch = path.with_name("planted")
    _binaries._write(scratch, _binaries.Binary("trust", _binaries.Target(90), b"PLANTED", ""))
    data = scratch.read_bytes()
    scratch.unlink()
    if by_nobody:
        write_as_nobody(path, data)
    else:
        path.write_bytes(data)
        path.chmod(0o666)


def test_binaries_are_written_private(kernel_cache):
    old = os.umask(0)
    try:
        compile_fake(FakeNvrtc())
    finally:
        os.umask(old)
    (entry,) = kernel_cache.glob("*.bin")
    assert stat.S_IMODE(kernel_cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600


@pytest.mark.parametrize("by_nobody", [
    pytest.param(True, marks=needs_second_user, id="another-users-file"),
    pytest.param(False, id="group-writable-file"),
])
def test_a_planted_binary_is_never_loaded(kernel_cache, by_nobody):
    nvrtc = FakeNvrtc()
    compile_fake(nvrtc)
    (entry,) = kernel_cache.glob("*.bin")
    plant_binary(entry, by_nobody=by_nobody)
    assert _binaries._read(entry, "trust", _binaries.Target(90)) is None
    _binaries._memory.clear()
    assert compile_fake(nvrtc).image != b"PLANTED"
    assert len(nvrtc.compiles) == 2
    assert entry.stat().st_uid == os.geteuid() and not entry.stat().st_mode & 0o022


def test_control_a_planted_binary_in_the_users_own_file_would_be_read(kernel_cache):
    compile_fake(FakeNvrtc())
    (entry,) = kernel_cache.glob("*.bin")
    plant_binary(entry, by_nobody=False)
    entry.chmod(0o600)  # now the user's own, private file: the format alone accepts it
    assert _binaries._read(entry, "trust", _binaries.Target(90)).image == b"PLANTED"


@pytest.mark.parametrize("shared_mode", [0o1777, 0o777])
def test_a_shared_kernel_cache_folder_is_not_read_or_written(kernel_cache, shared_mode):
    nvrtc = FakeNvrtc()
    compile_fake(nvrtc)
    (entry,) = kernel_cache.glob("*.bin")
    plant_binary(entry, by_nobody=False)
    entry.chmod(0o600)
    kernel_cache.chmod(shared_mode)
    _binaries._memory.clear()
    with pytest.warns(RuntimeWarning, match="CARAFE_CUPY_KERNEL_CACHE") as caught:
        assert compile_fake(nvrtc).image != b"PLANTED"
    assert str(kernel_cache) in str(caught[0].message)
    assert entry.read_bytes().endswith(b"PLANTED")  # left alone
    assert _binaries.cache_problem() is not None


@needs_second_user
def test_a_kernel_cache_folder_of_another_user_is_not_read(kernel_cache, monkeypatch):
    theirs = folder_of_nobody(0o755)
    try:
        monkeypatch.setenv("CARAFE_CUPY_KERNEL_CACHE", str(theirs))
        with pytest.warns(RuntimeWarning, match=f"owned by uid {NOBODY}"):
            compile_fake(FakeNvrtc())
        assert os.listdir(theirs) == []
    finally:
        os.rmdir(theirs)


# ------------------------------------------------------------ CuPy's kernel cache


@pytest.mark.parametrize("shared_mode", [0o1777, 0o777])
def test_a_shared_cupy_cache_folder_is_replaced_by_a_private_one(
    tmp_path, monkeypatch, shared_mode
):
    shared = tmp_path / "cupy"
    shared.mkdir()
    shared.chmod(shared_mode)
    monkeypatch.setenv("CUPY_CACHE_DIR", str(shared))
    with pytest.warns(RuntimeWarning, match="CUPY_CACHE_DIR"):
        _cupy_runtime._ensure_cupy_cache_dir()
    replaced = Path(os.environ["CUPY_CACHE_DIR"])
    assert replaced != shared and stat.S_IMODE(replaced.stat().st_mode) == 0o700


@needs_second_user
def test_a_cupy_cache_holding_another_users_file_is_replaced(tmp_path, monkeypatch):
    folder = tmp_path / "cupy"
    folder.mkdir(mode=0o700)
    write_as_nobody(folder / "planted.cubin", b"planted")
    monkeypatch.setenv("CUPY_CACHE_DIR", str(folder))
    assert f"owned by uid {NOBODY}" in _cupy_runtime.cupy_cache_problem()
    with pytest.warns(RuntimeWarning, match="planted.cubin"):
        _cupy_runtime._ensure_cupy_cache_dir()
    assert Path(os.environ["CUPY_CACHE_DIR"]) != folder


def test_a_private_cupy_cache_folder_is_kept(tmp_path, monkeypatch):
    folder = tmp_path / "cupy" / "kernel_cache"
    monkeypatch.setenv("CUPY_CACHE_DIR", str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _cupy_runtime._ensure_cupy_cache_dir()
    assert os.environ["CUPY_CACHE_DIR"] == str(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


INFO_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from carafe_cupy._cli.check import info_lines
    print("\\n".join(info_lines()))
    """
)


def test_cupy_cache_dir_at_a_file_is_not_reported_as_cupy_missing(tmp_path):
    pytest.importorskip("cupy")
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    child = subprocess.run(
        [sys.executable, "-c", INFO_CHILD, str(ROOT)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "CUPY_CACHE_DIR": str(blocker)},
    )
    assert child.returncode == 0, child.stderr
    assert "CuPy is not installed" not in child.stdout
    assert "cupy not available" not in child.stdout
    assert str(blocker) in child.stderr  # the warning says what was wrong with it


FORK_CHILD = """
import os, sys
sys.path.insert(0, sys.argv[1])
from carafe_cupy._core import private_dirs
folder = private_dirs.fallback_dir("carafe_cupy_fork_test-")
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a normal exit runs the inherited exit handlers
os.waitpid(pid, 0)
assert folder.is_dir(), "a forked child removed its parent's folder"
print(folder)
"""


def test_a_forked_child_leaves_its_parents_fallback_folder(tmp_path):
    child = subprocess.run(
        [sys.executable, "-c", FORK_CHILD, str(ROOT)], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr
    assert not Path(child.stdout.strip()).exists()  # removed when the parent exits


def test_a_cupy_that_fails_to_import_is_reported_with_its_error(monkeypatch):
    import importlib.util

    from carafe_cupy import KernelsUnavailableError
    from carafe_cupy._cli import check as _check

    if importlib.util.find_spec("cupy") is None:
        pytest.skip("CuPy is not installed, so its import cannot fail for another reason")

    def broken():
        raise KernelsUnavailableError("CuPy could not be imported: [Errno 17] File exists: '/x'")

    monkeypatch.setattr(_cupy_runtime, "_import_cupy", broken)
    line = _check.cupy_arrays_line()
    assert "CuPy is installed but CuPy could not be imported: [Errno 17]" in line
    assert "not installed" not in line
