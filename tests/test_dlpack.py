"""The array front end: DLPack arrays of any library, and casts on the array's device."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import carafe_cupy
from carafe_cupy import arrays
from carafe_cupy._array import api as _cupy_api
from carafe_cupy._runtime import cupy_runtime as _cupy_runtime

from naive import naive_carafe

ROOT = Path(__file__).resolve().parents[1]
K, G, S = 3, 2, 2
needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)


class ForeignArray:
    """An array from a library the package has never heard of: only DLPack in common."""

    def __init__(self, data: np.ndarray):
        self.data = data

    def __dlpack__(self, stream=None, **kwargs):
        return self.data.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.data.__dlpack_device__()

    def __array_namespace__(self, api_version=None):
        return SimpleNamespace(from_dlpack=lambda array: ForeignArray(np.from_dlpack(array)))


def _inputs(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((2, 4, 3, 5)).astype(dtype)
    masks = rng.random((2, G * K * K, 3 * S, 5 * S)).astype(dtype)
    grad_output = rng.standard_normal((2, 4, 3 * S, 5 * S)).astype(dtype)
    return features, masks, grad_output


@pytest.fixture
def simulator(monkeypatch):
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")


@needs_compiler
def test_any_dlpack_array_runs_and_comes_back_as_its_own_kind(simulator):
    features, masks, grad_output = _inputs()
    out = carafe_cupy.carafe(ForeignArray(features), ForeignArray(masks), K, G, S)
    assert isinstance(out, ForeignArray)
    np.testing.assert_allclose(out.data, naive_carafe(features, masks, K, G, S), rtol=1e-5)
    grads = carafe_cupy.carafe_backward(
        ForeignArray(grad_output), ForeignArray(features), ForeignArray(masks), K, G, S
    )
    expected = _cupy_api.carafe_backward(grad_output, features, masks, K, G, S)
    for grad, reference in zip(grads, expected):
        assert isinstance(grad, ForeignArray)
        np.testing.assert_array_equal(grad.data, reference)


@needs_compiler
def test_torch_cpu_tensors_through_the_array_front_end(simulator):
    torch = pytest.importorskip("torch")
    features, masks, grad_output = (torch.from_numpy(a) for a in _inputs(seed=1))
    out = arrays.carafe(features, masks.double(), K, G, S)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    torch.testing.assert_close(out, carafe_cupy.carafe(features, masks.double(), K, G, S))
    grad_features, grad_masks = arrays.carafe_backward(grad_output, features, masks, K, G, S)
    assert isinstance(grad_features, torch.Tensor) and grad_features.dtype == torch.float32
    expected = carafe_cupy.carafe_backward(grad_output, features, masks, K, G, S)
    torch.testing.assert_close(grad_features, expected[0])
    torch.testing.assert_close(grad_masks, expected[1])
    # zero-copy in: the kernels read the tensor's own memory
    assert np.from_dlpack(features).ctypes.data == features.data_ptr()


def test_cpu_arrays_without_the_simulator_run_on_the_torch_cpu_path(monkeypatch):
    # tests/test_interop_dlpack_cpu.py has the rest: numpy, bare objects, bfloat16, no torch
    monkeypatch.delenv("CARAFE_CUPY_SIMULATOR", raising=False)
    features, masks, grad_output = _inputs()
    out = carafe_cupy.carafe(ForeignArray(features), ForeignArray(masks), K, G, S)
    assert isinstance(out, ForeignArray)
    np.testing.assert_allclose(out.data, naive_carafe(features, masks, K, G, S), rtol=1e-5)
    grads = arrays.carafe_backward(
        ForeignArray(grad_output), ForeignArray(features), ForeignArray(masks), K, G, S
    )
    expected = carafe_cupy.carafe_backward(grad_output, features, masks, K, G, S)
    for grad, reference in zip(grads, expected):
        assert isinstance(grad, ForeignArray)
        np.testing.assert_array_equal(grad.data, reference)


def test_arrays_of_different_kinds_are_refused(simulator):
    features, masks, _ = _inputs()
    with pytest.raises(TypeError, match="inputs must all be arrays of one kind; features is"):
        carafe_cupy.carafe(features, ForeignArray(masks), K, G, S)
    with pytest.raises(TypeError, match="features must be a cupy.ndarray or an array with"):
        arrays.carafe([1.0], [2.0], K, G, S)


class _FakeDevice:
    current = 0

    def __init__(self, index):
        self.index = index

    def __enter__(self):
        self.previous, _FakeDevice.current = _FakeDevice.current, self.index

    def __exit__(self, *exc):
        _FakeDevice.current = self.previous


class _FakeDeviceArray:
    """A cupy-like array on device 1 that records the device current at each cast."""

    def __init__(self, dtype, casts):
        self.dtype, self.device, self.casts = np.dtype(dtype), SimpleNamespace(id=1), casts

    def astype(self, dtype, copy=True):
        self.casts.append(_FakeDevice.current)
        return _FakeDeviceArray(dtype, self.casts)


def test_promote_casts_on_the_arrays_device_not_the_current_one(monkeypatch):
    fake_cupy = SimpleNamespace(
        cuda=SimpleNamespace(Device=_FakeDevice),
        result_type=lambda *arrays: np.result_type(*(array.dtype for array in arrays)),
    )
    monkeypatch.setattr(_cupy_runtime, "_import_cupy", lambda: fake_cupy)
    casts = []
    promoted = _cupy_api._promote(
        _FakeDeviceArray(np.float32, casts), _FakeDeviceArray(np.float64, casts)
    )
    assert [array.dtype for array in promoted] == [np.float64, np.float64]
    assert casts == [1, 1] and _FakeDevice.current == 0


@needs_compiler
def test_the_example_round_trips_torch_and_the_array_side():
    pytest.importorskip("torch")
    environment = dict(os.environ, CARAFE_CUPY_SIMULATOR="1")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "cupy_pipeline.py"), "--with-torch"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("torch round trip:") == 6
    assert "FAILED" not in result.stdout


def test_the_dlpack_benchmark_prints_its_figures(capsys, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_startup_dlpack

    bench_startup_dlpack.exchange("cpu", calls=20)
    printed = capsys.readouterr().out
    for line in ("raw pointers + strides", "from_dlpack + array_ref", "x the raw pointers"):
        assert line in printed


def _cuda_ready():
    torch = pytest.importorskip("torch")
    if not (torch.cuda.is_available() and _cupy_runtime.gpu_kernels_available()):
        pytest.skip("needs a CUDA GPU with CuPy and NVRTC")
    return torch


@pytest.mark.gpu
def test_torch_cuda_tensors_through_dlpack_follow_the_producers_stream():
    torch = _cuda_ready()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        # queued on torch's side stream; CuPy must wait for it (stream protocol)
        features = torch.randn(2, 64, 96, 96, device="cuda").mul_(3.0).add_(1.0)
        masks = torch.rand(2, 25, 192, 192, device="cuda")
        out = arrays.carafe(features, masks, 5, 1, 2)
        expected = carafe_cupy.carafe(features, masks, 5, 1, 2)
    torch.cuda.synchronize()
    assert isinstance(out, torch.Tensor) and out.device == features.device
    torch.testing.assert_close(out, expected)


@pytest.mark.gpu
def test_dlpack_arrays_run_on_their_own_device():
    torch = _cuda_ready()
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    features = torch.randn(1, 8, 6, 6, device="cuda:1")
    masks = torch.rand(1, 9, 12, 12, device="cuda:1")
    with torch.cuda.device(0):
        out = arrays.carafe(features, masks, 3, 1, 2)
    assert out.device == torch.device("cuda", 1)
    torch.testing.assert_close(out, carafe_cupy.carafe(features, masks, 3, 1, 2))
