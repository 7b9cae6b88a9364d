"""DLPack arrays in host memory (numpy, an object with nothing but the protocol, bfloat16
ones) on the PyTorch CPU path, messages for inputs of mixed kinds, JAX tracers (detected
without JAX), and ``carafe_cupy.arrays`` as an attribute. No extra is needed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import recording_runtime
import torch

import carafe_cupy
from carafe_cupy import arrays
from carafe_cupy._runtime import cupy_runtime as _cupy_runtime

from naive import naive_carafe, naive_carafe_backward

ROOT = Path(__file__).resolve().parents[1]
K, G, S = 3, 2, 2
needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)


class BareArray:
    """Nothing but the DLPack protocol: no namespace, no from_dlpack, no dtype."""

    def __init__(self, data):
        self._data = data

    def __dlpack__(self, **kwargs):
        return self._data.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._data.__dlpack_device__()


class TorchBackedArray(BareArray):
    """An array library that speaks DLPack and has bfloat16 (as JAX does), built on torch."""

    def __array_namespace__(self, api_version=None):
        return SimpleNamespace(from_dlpack=lambda value: TorchBackedArray(torch.from_dlpack(value)))


def _inputs(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((2, 4, 3, 5)).astype(dtype)
    masks = rng.random((2, G * K * K, 3 * S, 5 * S)).astype(dtype)
    grad_output = rng.standard_normal((2, 4, 3 * S, 5 * S)).astype(dtype)
    return features, masks, grad_output


@pytest.fixture
def no_simulator(monkeypatch):
    monkeypatch.delenv("CARAFE_CUPY_SIMULATOR", raising=False)


@pytest.fixture(params=["pytorch", pytest.param("simulator", marks=needs_compiler)])
def cpu_route(request, monkeypatch):
    """Without the simulator host arrays take the PyTorch path; with it, the kernels."""
    if request.param == "simulator":
        monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    else:
        monkeypatch.delenv("CARAFE_CUPY_SIMULATOR", raising=False)
    return request.param


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numpy_arrays_run_on_the_torch_cpu_path_and_come_back_as_numpy(no_simulator, dtype):
    features, masks, grad_output = _inputs(dtype=dtype)
    tolerance = {"rtol": 1e-12} if dtype == np.float64 else {"rtol": 1e-5, "atol": 1e-6}
    out = carafe_cupy.carafe(features, masks, K, G, S)
    assert type(out) is np.ndarray and out.dtype == dtype
    np.testing.assert_allclose(out, naive_carafe(features, masks, K, G, S), **tolerance)
    grads = carafe_cupy.carafe_backward(grad_output, features, masks, K, G, S)
    expected = naive_carafe_backward(grad_output, features, masks, K, G, S)
    for grad, reference in zip(grads, expected):
        assert type(grad) is np.ndarray and grad.dtype == dtype
        np.testing.assert_allclose(grad, reference, **tolerance)


def test_numpy_reassemble_with_stride_and_dilation_runs_on_the_torch_cpu_path(no_simulator):
    rng = np.random.default_rng(3)
    features = rng.standard_normal((1, 2, 7, 6))
    kernels = rng.random((1, 9, 4, 3))
    out = arrays.reassemble(features, kernels, 3, 1, 1, 2, 2)
    np.testing.assert_allclose(out, naive_carafe(features, kernels, 3, 1, 1, 2, 2), rtol=1e-12)
    grad_output = rng.standard_normal(out.shape)
    grads = arrays.reassemble_backward(grad_output, features, kernels, 3, 1, 1, 2, 2)
    expected = naive_carafe_backward(grad_output, features, kernels, 3, 1, 1, 2, 2)
    for grad, reference in zip(grads, expected):
        np.testing.assert_allclose(grad, reference, rtol=1e-12, atol=1e-12)


def test_numpy_results_match_torch_and_promote_like_it(no_simulator):
    features, masks, _ = _inputs()
    out = carafe_cupy.carafe(features.astype(np.float32), masks, K, G, S)
    assert out.dtype == np.float64  # float32 with float64 promotes, as in torch
    tensors = torch.from_numpy(features).float(), torch.from_numpy(masks)
    expected = carafe_cupy.carafe(*tensors, K, G, S)
    np.testing.assert_array_equal(out, expected.numpy())


def test_readonly_numpy_arrays_are_read_in_place(no_simulator):
    features, masks, _ = _inputs()
    features.flags.writeable = masks.flags.writeable = False
    out = carafe_cupy.carafe(features, masks, K, G, S)
    np.testing.assert_allclose(out, naive_carafe(features, masks, K, G, S), rtol=1e-12)


def test_a_bare_dlpack_object_comes_back_as_numpy(cpu_route):
    features, masks, grad_output = _inputs(seed=1)
    out = carafe_cupy.carafe(BareArray(features), BareArray(masks), K, G, S)
    assert type(out) is np.ndarray
    np.testing.assert_allclose(out, naive_carafe(features, masks, K, G, S), rtol=1e-12)
    grads = arrays.carafe_backward(
        BareArray(grad_output), BareArray(features), BareArray(masks), K, G, S
    )
    expected = naive_carafe_backward(grad_output, features, masks, K, G, S)
    for grad, reference in zip(grads, expected):
        assert type(grad) is np.ndarray
        np.testing.assert_allclose(grad, reference, rtol=1e-12, atol=1e-12)


class BareCudaArray:
    """Nothing but the DLPack protocol, in CUDA memory (of a fake CuPy's device 1)."""

    def __init__(self, data):
        self.data = data

    def __dlpack__(self, **kwargs):
        raise AssertionError("read through the fake cupy.from_dlpack")

    def __dlpack_device__(self):
        return (2, 1)  # kDLCUDA, device 1


def test_a_bare_dlpack_object_in_cuda_memory_comes_back_as_cupy(monkeypatch):
    from test_launch_device_stream import FakeCupy

    runtime = recording_runtime.install(monkeypatch)
    fake = FakeCupy(streams={0: 0x100, 1: 0x111})
    fake.from_dlpack = lambda value: fake.array(value.data, fake.current)
    monkeypatch.setitem(sys.modules, "cupy", fake)  # is_cupy_array looks here
    monkeypatch.setattr(_cupy_runtime, "_import_cupy", lambda: fake)
    features, masks, grad_output = _inputs(dtype=np.float32)
    out = carafe_cupy.carafe(BareCudaArray(features), BareCudaArray(masks), K, G, S)
    grads = arrays.carafe_backward(
        *(BareCudaArray(a) for a in (grad_output, features, masks)), K, G, S
    )
    for result in (out, *grads):
        assert isinstance(result, fake.ndarray) and result.device.id == 1
    assert {(launch.device, launch.stream) for launch in runtime.launches} == {(1, 0x111)}


def test_bfloat16_arrays_go_through_torch_and_come_back_as_their_kind(cpu_route):
    features, masks, grad_output = (
        torch.from_numpy(a).bfloat16() for a in _inputs(seed=2, dtype=np.float32)
    )
    wrapped = [TorchBackedArray(t) for t in (features, masks)]
    out = carafe_cupy.carafe(*wrapped, K, G, S)
    assert isinstance(out, TorchBackedArray) and out._data.dtype == torch.bfloat16
    reference = naive_carafe(features.double().numpy(), masks.double().numpy(), K, G, S)
    np.testing.assert_allclose(out._data.double().numpy(), reference, rtol=2e-2, atol=2e-2)
    grads = carafe_cupy.carafe_backward(TorchBackedArray(grad_output), *wrapped, K, G, S)
    expected = carafe_cupy.carafe_backward(grad_output, features, masks, K, G, S)
    for grad, want in zip(grads, expected):
        assert isinstance(grad, TorchBackedArray) and grad._data.dtype == torch.bfloat16
        torch.testing.assert_close(grad._data, want)


def test_a_bfloat16_result_for_a_bare_object_is_refused_naming_the_dtype(cpu_route):
    features, masks, _ = (torch.from_numpy(a).bfloat16() for a in _inputs(dtype=np.float32))
    with pytest.raises(TypeError, match=r"carafe: the result \(torch.bfloat16\) has no numpy"):
        carafe_cupy.carafe(BareArray(features), BareArray(masks), K, G, S)


def test_torch_cpu_tensors_through_the_array_front_end_without_the_simulator(no_simulator):
    features, masks, grad_output = (torch.from_numpy(a) for a in _inputs(seed=4))
    features.requires_grad_()
    out = arrays.carafe(features, masks, K, G, S)
    assert isinstance(out, torch.Tensor) and not out.requires_grad
    torch.testing.assert_close(out, carafe_cupy.carafe(features, masks, K, G, S).detach())
    grads = arrays.carafe_backward(grad_output, features, masks, K, G, S)
    expected = carafe_cupy.carafe_backward(grad_output, features, masks, K, G, S)
    for grad, want in zip(grads, expected):
        torch.testing.assert_close(grad, want)


def test_host_arrays_without_torch_or_the_simulator_are_refused_with_the_ways_out(
    no_simulator, monkeypatch
):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    features, masks, _ = _inputs()
    refused = r"carafe: features \(numpy.ndarray\) is in CPU memory"
    with pytest.raises(TypeError, match=refused) as info:
        carafe_cupy.carafe(features, masks, K, G, S)
    for way_out in ("Install torch", "CUDA device", "CARAFE_CUPY_SIMULATOR=1"):
        assert way_out in str(info.value)
    with pytest.raises(TypeError, match=r"reassemble: features \(.*BareArray\) is in CPU memory"):
        carafe_cupy.reassemble(BareArray(features), BareArray(masks), K, G, S)


@pytest.mark.parametrize("simulated", [False, pytest.param(True, marks=needs_compiler)])
def test_numpy_mixed_with_torch_names_each_inputs_kind(monkeypatch, simulated):
    if simulated:
        monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    else:
        monkeypatch.delenv("CARAFE_CUPY_SIMULATOR", raising=False)
    features, masks, grad_output = _inputs()
    expected = (
        r"carafe: inputs must all be torch tensors, or all arrays of one other kind "
        r"\(cupy, numpy, ...\); features is numpy.ndarray, masks is torch.Tensor"
    )
    with pytest.raises(TypeError, match=expected):
        carafe_cupy.carafe(features, torch.from_numpy(masks), K, G, S)
    with pytest.raises(TypeError, match="grad_output is torch.Tensor, features is numpy.ndarray"):
        carafe_cupy.carafe_backward(torch.from_numpy(grad_output), features, masks, K, G, S)


@pytest.mark.parametrize("function", ["reassemble", "reassemble_backward", "carafe_backward"])
def test_the_mixed_kinds_error_names_the_function_called(cpu_route, function):
    features, masks, grad_output = _inputs()
    inputs = (features, BareArray(masks))
    if function != "reassemble":
        inputs = (grad_output, *inputs)
    with pytest.raises(TypeError, match=rf"^{function}: inputs must all be arrays of one kind"):
        getattr(carafe_cupy, function)(*inputs, K, G, S)


def _fake_tracer():
    """An object whose class descends from one named as JAX's Tracer, in a jax module."""
    tracer = type("Tracer", (), {"__module__": "jax._src.core", "__dlpack__": None})
    return type("DynamicJaxprTracer", (tracer,), {"__module__": "jax._src.interpreters"})()


@pytest.mark.parametrize("front_end", ["carafe_cupy", "arrays"])
def test_jax_tracers_are_refused_saying_the_package_runs_eagerly(front_end):
    features, masks, _ = _inputs()
    module = carafe_cupy if front_end == "carafe_cupy" else arrays
    with pytest.raises(TypeError, match="carafe: masks is a JAX tracer") as info:
        module.carafe(features, _fake_tracer(), K, G, S)
    assert "runs eagerly, on concrete arrays, outside JAX transforms" in str(info.value)


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_tracer_detection_and_the_cpu_path_never_import_jax():
    result = _run_python(
        """
        import sys
        import numpy as np
        import carafe_cupy
        out = carafe_cupy.carafe(np.ones((1, 1, 2, 2)), np.ones((1, 9, 4, 4)), 3, 1, 2)
        assert type(out) is np.ndarray, type(out)
        assert "jax" not in sys.modules, "a call imported jax"
        print("ok")
        """
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_public_submodules_are_attributes_of_the_package_and_load_lazily():
    result = _run_python(
        """
        import sys
        import carafe_cupy
        loaded = [name for name in ("carafe_cupy.arrays", "torch") if name in sys.modules]
        assert not loaded, loaded
        assert carafe_cupy.arrays.carafe is sys.modules["carafe_cupy.arrays"].carafe
        assert "torch" not in sys.modules, "carafe_cupy.arrays imported torch"
        for name in ("nn", "nn_reassembly", "mmcv_compat"):
            assert getattr(carafe_cupy, name) is sys.modules["carafe_cupy." + name]
        assert "carafe_cupy.mmengine_registry" not in sys.modules
        try:
            carafe_cupy.mmengine_registry
        except AttributeError:
            print("ok")
        """
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
