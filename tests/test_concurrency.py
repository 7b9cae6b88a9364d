"""Load-once under concurrent first calls, compile errors and kernel-cache faults.

Runs without a GPU: ``_runtime.cupy_runtime._import_cupy`` is replaced by a fake CuPy
(tests/fake_cuda.py) whose NVRTC records compiles (and sleeps inside them to widen any
race window) and whose module loader records loads.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import warnings

import pytest
from fake_cuda import FakeCupy, FakeNvrtc

from carafe_cupy._kernels import sources as _sources
from carafe_cupy._runtime import binaries as _binaries
from carafe_cupy._runtime import cupy_runtime as _cupy_runtime

THREADS = 8
SOURCE = "// kernels"
TILED = "carafe_tiled_float32_k3"


@pytest.fixture
def install_fake_cupy(monkeypatch, tmp_path):
    monkeypatch.setenv("CARAFE_CUPY_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setattr(_binaries, "_memory", {})
    monkeypatch.setattr(_binaries, "_warned", False)

    def install(capabilities=(80, 80), **options):
        fake = FakeCupy(capabilities, FakeNvrtc(**options))
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


def test_concurrent_first_calls_load_each_module_once(install_fake_cupy):
    fake = install_fake_cupy(compile_seconds=0.05)
    runtime = _cupy_runtime.CupyRuntime()
    names = _sources.all_kernel_names() + _sources.module_kernel_names(TILED)
    module_of = {name: "carafe" for name in _sources.all_kernel_names()}
    module_of.update({name: TILED for name in _sources.module_kernel_names(TILED)})

    # every thread asks for every kernel, each in a different order
    def first_calls(index):
        order = names[index % len(names) :] + names[: index % len(names)]
        return {name: runtime.kernel(module_of[name], SOURCE, name, 0) for name in order}

    results = call_together(first_calls)
    assert sorted(name for name, _ in fake.nvrtc.compiles) == ["carafe.cu", f"{TILED}.cu"]
    assert len(fake.loads) == 2 and runtime.compile_count == 2
    for kernels in results:  # all threads got the one kernel per name
        assert all(kernels[name] is results[0][name] for name in names)
        assert all(kernel.name == name for name, kernel in kernels.items())


def test_each_device_loads_its_own_copy_of_one_binary(install_fake_cupy):
    fake = install_fake_cupy(compile_seconds=0.01)
    runtime = _cupy_runtime.CupyRuntime()
    name = _sources.kernel_names("float32")[0]
    kernels = call_together(lambda index: runtime.kernel("carafe", SOURCE, name, index % 2))
    assert len(fake.nvrtc.compiles) == 1  # both GPUs are sm_80: one binary
    assert sorted(device for device, _ in fake.loads) == [0, 1]
    assert kernels[0] is kernels[2] and kernels[0] is not kernels[1]


def test_the_disk_cache_serves_a_new_process(install_fake_cupy, monkeypatch):
    fake = install_fake_cupy()
    _cupy_runtime.CupyRuntime().kernel("carafe", SOURCE, "carafe_forward_float32", 0)
    monkeypatch.setattr(_binaries, "_memory", {})  # as in a new process
    _cupy_runtime.CupyRuntime().kernel("carafe", SOURCE, "carafe_forward_float32", 0)
    assert len(fake.nvrtc.compiles) == 1 and len(fake.loads) == 2
    assert fake.loads[0][1] == fake.loads[1][1]
    directory = _binaries.cache_dir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for entry in directory.iterdir():
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry


def test_a_damaged_cache_entry_is_compiled_again(install_fake_cupy, monkeypatch):
    fake = install_fake_cupy()
    _cupy_runtime.CupyRuntime().kernel("carafe", SOURCE, "carafe_forward_float32", 0)
    (entry,) = _binaries.cache_dir().iterdir()
    stored = entry.read_bytes()
    for damaged in (stored[: len(stored) // 2], stored[:10], b"", stored[:-1] + b"\x00"):
        entry.write_bytes(damaged)
        monkeypatch.setattr(_binaries, "_memory", {})
        _cupy_runtime.CupyRuntime().kernel("carafe", SOURCE, "carafe_forward_float32", 0)
        assert fake.loads[-1][1] == fake.loads[0][1]
        assert entry.read_bytes() == stored
    assert len(fake.nvrtc.compiles) == 5


def test_compile_error_names_the_kernel_and_carries_the_log(install_fake_cupy):
    log = 'carafe.cu(12): error: identifier "index_t" is undefined'
    install_fake_cupy(compiler_log=log)
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
        IsADirectoryError(21, "Is a directory", "/cache/carafe-sm_80-0123.bin"),
        OSError(28, "No space left on device"),
    ],
    ids=["unwritable", "entry-is-a-directory", "disk-full"],
)
def test_unusable_disk_cache_falls_back_to_an_in_memory_compile(
    install_fake_cupy, monkeypatch, error
):
    fake = install_fake_cupy()

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(_binaries, "_read", fail)
    monkeypatch.setattr(_binaries, "_write", fail)
    runtime = _cupy_runtime.CupyRuntime()
    with pytest.warns(RuntimeWarning, match="CARAFE_CUPY_KERNEL_CACHE") as record:
        for module in ("carafe", TILED):
            runtime.kernel(module, SOURCE, _sources.module_kernel_names(module)[0], 0)
    assert len(record) == 1, "warn once, not per module"
    assert len(fake.loads) == 2


def test_a_cache_path_under_a_file_falls_back_too(install_fake_cupy, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CARAFE_CUPY_KERNEL_CACHE", str(blocker / "kernels"))
    fake = install_fake_cupy()
    with pytest.warns(RuntimeWarning, match="is unusable"):
        _cupy_runtime.CupyRuntime().kernel("carafe", SOURCE, "carafe_forward_float32", 0)
    assert len(fake.loads) == 1


def test_uncreatable_cache_dir_is_replaced_before_cupy_is_imported(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CUPY_CACHE_DIR", str(blocker / "kernel_cache"))
    with pytest.warns(RuntimeWarning, match="is not used"):
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
        "assert any('is not used' in str(w.message) for w in caught), caught\n"
    )
    environment = dict(os.environ, CUPY_CACHE_DIR=str(blocker / "kernel_cache"))
    result = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
