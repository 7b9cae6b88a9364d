"""Compile-once under concurrent first calls, compile errors and CuPy disk-cache faults.

Runs without a GPU: ``_runtime.cupy_runtime._import_cupy`` is replaced by a fake CuPy that
records compiles (and sleeps inside them to widen any race window).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import types
import warnings

import pytest

from carafe_cupy._kernels import sources as _sources
from carafe_cupy._runtime import cupy_runtime as _cupy_runtime

THREADS = 8
SOURCE = "// kernels"


class FakeCompileError(Exception):
    pass


class FakeCupy:
    """The slice of CuPy that ``CupyRuntime.kernel`` uses."""

    def __init__(self, compile_seconds=0.05, compiler_log=None, disk_cache_error=None):
        self.compiles: list[tuple[int, str]] = []
        self.in_memory_compiles = 0
        self._lock = threading.Lock()
        fake = self

        class Device:
            def __init__(self, device):
                self.device = device

            def __enter__(self):
                fake.current_device = self.device
                return self

            def __exit__(self, *exc_info):
                return False

        class RawModule:
            def __init__(self, code, options=()):
                assert code == SOURCE
                self.options = options

            def get_function(self, name):
                in_memory = os.environ.get("CUPY_CACHE_IN_MEMORY") == "1"
                if disk_cache_error is not None and not in_memory:
                    raise disk_cache_error
                time.sleep(compile_seconds)
                if compiler_log is not None:
                    raise FakeCompileError(compiler_log)
                with fake._lock:
                    fake.compiles.append((fake.current_device, name))
                    fake.in_memory_compiles += in_memory
                return types.SimpleNamespace(name=name, attributes={})

        self.RawModule = RawModule
        self.cuda = types.SimpleNamespace(
            Device=Device,
            compiler=types.SimpleNamespace(CompileException=FakeCompileError),
        )


@pytest.fixture
def install_fake_cupy(monkeypatch):
    def install(**options):
        fake = FakeCupy(**options)
        monkeypatch.setattr(_cupy_runtime, "_import_cupy", lambda: fake)
        return fake

    return install


def call_together(function, count=THREADS):
    """Run ``function(thread_index)`` in ``count`` threads released at the same moment."""
    barrier = threading.Barrier(count)
    results: list = [None] * count
    errors: list = []

    def worker(index):
        barrier.wait()
        try:
            results[index] = function(index)
        except BaseException as error:  # reported to the test below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert not errors, errors
    return results


def test_concurrent_first_calls_compile_each_kernel_once(install_fake_cupy):
    fake = install_fake_cupy()
    runtime = _cupy_runtime.CupyRuntime()
    names = _sources.all_kernel_names()

    # every thread asks for every kernel, each in a different order
    def first_calls(index):
        order = names[index % len(names) :] + names[: index % len(names)]
        return {name: runtime.kernel("carafe", SOURCE, name, 0) for name in order}

    results = call_together(first_calls)
    assert sorted(fake.compiles) == sorted((0, name) for name in names)
    assert runtime.compile_count == len(names)
    for kernels in results:  # all threads got the one loaded kernel per name
        assert all(kernels[name] is results[0][name] for name in names)
        assert all(kernel.name == name for name, kernel in kernels.items())


def test_each_device_compiles_its_own_copy(install_fake_cupy):
    fake = install_fake_cupy(compile_seconds=0.01)
    runtime = _cupy_runtime.CupyRuntime()
    name = _sources.kernel_names("float32")[0]
    kernels = call_together(lambda index: runtime.kernel("carafe", SOURCE, name, index % 2))
    assert sorted(fake.compiles) == [(0, name), (1, name)]
    assert kernels[0] is kernels[2] and kernels[0] is not kernels[1]


def test_compile_error_names_the_kernel_and_carries_the_log(install_fake_cupy):
    log = 'carafe.cu(12): error: identifier "index_t" is undefined'
    install_fake_cupy(compile_seconds=0, compiler_log=log)
    runtime = _cupy_runtime.CupyRuntime()
    with pytest.raises(_sources.KernelCompileError) as info:
        runtime.kernel("carafe", SOURCE, "carafe_forward_float16", 0)
    message = str(info.value)
    assert "carafe_forward_float16" in message and "carafe.cu" in message
    assert log in message
    assert runtime.compile_count == 0


def test_compile_error_reaches_every_waiting_thread(install_fake_cupy):
    install_fake_cupy(compile_seconds=0.02, compiler_log="error: bad")
    runtime = _cupy_runtime.CupyRuntime()

    def first_call(index):
        with pytest.raises(_sources.KernelCompileError, match="error: bad"):
            runtime.kernel("carafe", SOURCE, "carafe_forward_float32", 0)

    call_together(first_call)


# ------------------------------------------------------------ disk-cache faults


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(13, "Permission denied", "/cache/tmpabc"),
        IsADirectoryError(21, "Is a directory", "/cache/0123.cubin"),
        OSError(28, "No space left on device"),
    ],
    ids=["unwritable", "entry-is-a-directory", "disk-full"],
)
def test_unusable_disk_cache_falls_back_to_an_in_memory_compile(install_fake_cupy, error):
    fake = install_fake_cupy(compile_seconds=0, disk_cache_error=error)
    runtime = _cupy_runtime.CupyRuntime()
    names = _sources.kernel_names("float64")
    with pytest.warns(RuntimeWarning, match="CUPY_CACHE_DIR") as record:
        kernels = [runtime.kernel("carafe", SOURCE, name, 0) for name in names]
    assert len(record) == 1, "warn once, not per kernel"
    assert [kernel.name for kernel in kernels] == list(names)
    assert fake.in_memory_compiles == len(names)
    assert "CUPY_CACHE_IN_MEMORY" not in os.environ or os.environ["CUPY_CACHE_IN_MEMORY"] != "1"


def test_in_memory_switch_restores_the_environment(monkeypatch):
    monkeypatch.setenv("CUPY_CACHE_IN_MEMORY", "0")
    with _cupy_runtime._cupy_cache_in_memory():
        assert os.environ["CUPY_CACHE_IN_MEMORY"] == "1"
    assert os.environ["CUPY_CACHE_IN_MEMORY"] == "0"
    monkeypatch.delenv("CUPY_CACHE_IN_MEMORY")
    with _cupy_runtime._cupy_cache_in_memory():
        pass
    assert "CUPY_CACHE_IN_MEMORY" not in os.environ


def test_uncreatable_cache_dir_is_replaced_before_cupy_is_imported(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CUPY_CACHE_DIR", str(blocker / "kernel_cache"))
    with pytest.warns(RuntimeWarning, match="cannot be created"):
        _cupy_runtime._ensure_cupy_cache_dir()
    replacement = os.environ["CUPY_CACHE_DIR"]
    assert os.path.isdir(replacement) and os.access(replacement, os.W_OK)
    os.rmdir(replacement)


def test_writable_cache_dir_is_left_alone(monkeypatch, tmp_path):
    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _cupy_runtime._ensure_cupy_cache_dir()
    assert os.environ["CUPY_CACHE_DIR"] == str(tmp_path / "cache")


def test_cupy_imports_with_an_uncreatable_cache_dir(tmp_path):
    """Without the fallback, CuPy's own import fails on such a CUPY_CACHE_DIR."""
    pytest.importorskip("cupy")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    script = (
        "import warnings\n"
        "from carafe_cupy._runtime import cupy_runtime as _cupy_runtime\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    _cupy_runtime._import_cupy()\n"
        "assert any('cannot be created' in str(w.message) for w in caught), caught\n"
    )
    environment = dict(os.environ, CUPY_CACHE_DIR=str(blocker / "kernel_cache"))
    result = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_cupy_treats_a_corrupt_cache_entry_as_a_miss(tmp_path):
    """CuPy prefixes each cache file with its SHA-1 and recompiles on a mismatch.

    Kept as a test so a CuPy release that stops doing so is noticed: the
    runtime relies on it instead of deleting cache files itself.
    """
    pytest.importorskip("cupy")
    compiler_cache = pytest.importorskip("cupy.cuda._compiler_cache")
    backend = compiler_cache.DiskKernelCacheBackend(str(tmp_path))
    payload = b"\x7fELF" + bytes(range(256)) * 4
    backend.save("entry.cubin", payload, "source")
    assert backend.load("entry.cubin") == payload
    stored = (tmp_path / "entry.cubin").read_bytes()
    for damaged in (stored[: len(stored) // 2], stored[:10], b"", stored[:-1] + b"\x00"):
        (tmp_path / "entry.cubin").write_bytes(damaged)
        assert backend.load("entry.cubin") is None
