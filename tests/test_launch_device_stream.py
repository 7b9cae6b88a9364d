"""Every launch goes to the inputs' device and the caller's stream, tested without a GPU.

The launcher's GPU runtime is replaced by one that records each launch
(``recording_runtime``). The launch functions are called as the front ends call
them, for tensors on cuda:1 while cuda:0 is current and a non-default stream; the
torch side's choice of device and stream (``device_and_stream``) runs against a fake
``torch.cuda.current_stream``; the array front end runs on fake CuPy arrays.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import recording_runtime

from carafe_cupy._kernels import sources as _sources
from carafe_cupy._plan import planner as _planner
from carafe_cupy._runtime import cupy_runtime as _cupy_runtime
from carafe_cupy._runtime import launch as _launch

DEVICE = 1
STREAM = 0x7F00_BEEF_0000  # a made-up cudaStream_t of the caller's
# (N, C, H, W, k, G, s, stride, dilation): every variant family, a strided general one
GEOMETRIES = {
    "tiled pairs": _planner.Geometry(1, 8, 5, 6, 3, 2, 2),
    "tiled, odd scale": _planner.Geometry(1, 8, 5, 6, 5, 1, 3),
    "general, k = 9": _planner.Geometry(2, 4, 3, 4, 9, 1, 2),
    "general, strided": _planner.Geometry(1, 4, 7, 5, 3, 2, 1, 2, 1),
}


@pytest.fixture
def runtime(monkeypatch):
    return recording_runtime.install(monkeypatch)


def contiguous(shape, pointer, dtype="float32"):
    n, c, h, w = shape
    return _planner.TensorRef(pointer, (c * h * w, h * w, w, 1), dtype)


def refs(geometry, *names, dtype="float32"):
    """Contiguous TensorRefs for the named tensors, each at its own made-up address."""
    g = geometry
    shapes = {
        "features": (g.batch, g.channels, g.height, g.width),
        "masks": (g.batch, g.mask_channels, g.out_height, g.out_width),
        "logits": (g.batch, g.mask_channels * g.scale_factor**2, g.height, g.width),
        "output": (g.batch, g.channels, g.out_height, g.out_width),
    }
    shapes["grad_output"], shapes["grad_features"] = shapes["output"], shapes["features"]
    shapes["grad_masks"], shapes["grad_logits"] = shapes["masks"], shapes["logits"]
    return [contiguous(shapes[name], 0x10000 * (i + 1), dtype) for i, name in enumerate(names)]


def check_every_launch(runtime, planned):
    """The runtime saw exactly the planned launches, each on DEVICE and STREAM."""
    assert planned, "nothing planned: the case tests nothing"
    seen = [(r.module_name, r.kernel_name, r.grid, r.block, r.shared_mem) for r in runtime.launches]
    wanted = [(p.module, p.kernel, p.grid, p.block, p.shared_mem) for p in planned]
    assert seen == wanted
    for record in runtime.launches:
        assert (record.device, record.stream) == (DEVICE, STREAM), record.kernel_name
        assert record.source == _sources.kernel_source(record.module_name)


@pytest.mark.parametrize("variant", ["auto", "general"])
@pytest.mark.parametrize("case", GEOMETRIES)
def test_forward_and_backward_launch_on_the_given_device_and_stream(runtime, case, variant):
    geometry = GEOMETRIES[case]
    with _planner.forced_variant(variant):
        features, masks, output = refs(geometry, "features", "masks", "output")
        _launch.launch_forward(geometry, features, masks, output, DEVICE, STREAM)
        check_every_launch(runtime, _planner.plan_forward(geometry, features, masks, output))

        runtime.launches.clear()
        tensors = refs(geometry, "grad_output", "features", "masks", "grad_features", "grad_masks")
        _launch.launch_backward(geometry, *tensors, DEVICE, STREAM)
        check_every_launch(runtime, _planner.plan_backward(geometry, *tensors))


def test_fused_launches_on_the_given_device_and_stream(runtime):
    geometry = GEOMETRIES["tiled pairs"]
    assert _planner.fused_supported(geometry, "float32")
    features, logits, output = refs(geometry, "features", "logits", "output")
    _launch.launch_fused_forward(geometry, features, logits, output, DEVICE, STREAM)
    check_every_launch(runtime, _planner.plan_fused_forward(geometry, features, logits, output))

    runtime.launches.clear()
    tensors = refs(geometry, "grad_output", "features", "logits", "grad_features", "grad_logits")
    _launch.launch_fused_backward(geometry, *tensors, DEVICE, STREAM)
    check_every_launch(runtime, _planner.plan_fused_backward(geometry, "float32"))


def test_the_launch_arguments_reach_the_runtime_unchanged(runtime):
    geometry = GEOMETRIES["tiled pairs"]
    features, masks, output = refs(geometry, "features", "masks", "output")
    _launch.launch_forward(geometry, features, masks, output, DEVICE, STREAM)
    (planned,) = _planner.plan_forward(geometry, features, masks, output)
    (record,) = runtime.launches
    assert record.args == _launch.launch_arguments(planned, geometry, (features, masks, output))


# ---------------------------------------------------------------- the torch side


class FakeCurrentStream:
    """``torch.cuda.current_stream``: a distinct stream per device, cuda:0 current."""

    CURRENT_DEVICE = 0

    def __init__(self):
        self.asked: list = []

    def __call__(self, device=None):
        self.asked.append(device)
        import torch

        index = self.CURRENT_DEVICE if device is None else torch.device(device).index
        if index is None:
            index = self.CURRENT_DEVICE
        return types.SimpleNamespace(cuda_stream=0x5000 + index)


@pytest.fixture
def fake_current_stream(monkeypatch):
    torch = pytest.importorskip("torch")
    fake = FakeCurrentStream()
    monkeypatch.setattr(torch.cuda, "current_stream", fake)
    return fake


def test_torch_tensors_on_cuda_1_take_cuda_1_and_its_current_stream(fake_current_stream):
    import torch

    from carafe_cupy._torch.common import device_and_stream

    assert device_and_stream(torch.device("cuda", 1)) == (1, 0x5001)
    assert device_and_stream(torch.device("cuda", 0)) == (0, 0x5000)
    assert [torch.device(asked).index for asked in fake_current_stream.asked] == [1, 0]


def test_cpu_tensors_take_device_0_and_no_stream(fake_current_stream):
    import torch

    from carafe_cupy._torch.common import device_and_stream

    assert device_and_stream(torch.device("cpu")) == (0, 0)
    assert fake_current_stream.asked == []  # no CUDA call for a CPU tensor


# ---------------------------------------------------------------- the array front end


class FakeCupy:
    """The slice of CuPy the array front end uses: arrays that live on a device
    (numpy memory underneath), a current device and a current stream per device."""

    def __init__(self, streams):
        fake = self
        self.streams = streams
        self.current = 0

        class ndarray:  # noqa: N801 - CuPy's name
            def __init__(self, data: np.ndarray, device: int):
                self._data = data
                self.device = types.SimpleNamespace(id=device)
                self.data = types.SimpleNamespace(ptr=data.ctypes.data)
                self.shape, self.dtype, self.strides = data.shape, data.dtype, data.strides

            def astype(self, dtype, copy=True):
                if np.dtype(dtype) == self.dtype and not copy:
                    return self
                return ndarray(self._data.astype(dtype), fake.current)

        class Device:
            def __init__(self, index):
                self.index = index

            def __enter__(self):
                self.previous, fake.current = fake.current, self.index
                return self

            def __exit__(self, *exc_info):
                fake.current = self.previous
                return False

            @property
            def mem_info(self):  # (free, total) bytes: an 80 GB GPU
                return 80 * 10**9, 80 * 10**9

        self.ndarray = ndarray
        self.cuda = types.SimpleNamespace(
            Device=Device,
            get_current_stream=lambda: types.SimpleNamespace(ptr=fake.streams[fake.current]),
        )

    def result_type(self, *arrays):
        return np.result_type(*(array.dtype for array in arrays))

    def empty(self, shape, dtype):
        return self.ndarray(np.empty(shape, dtype), self.current)

    def array(self, data, device):
        return self.ndarray(np.ascontiguousarray(data), device)


@pytest.fixture
def fake_cupy(monkeypatch, runtime):
    fake = FakeCupy(streams={0: 0x100, 1: 0x111})
    monkeypatch.setitem(sys.modules, "cupy", fake)  # is_cupy_array looks here
    monkeypatch.setattr(_cupy_runtime, "_import_cupy", lambda: fake)
    return fake


def array_inputs(fake, device, dtype=np.float32):
    rng = np.random.default_rng(0)
    features = fake.array(rng.standard_normal((1, 4, 3, 5)).astype(dtype), device)
    masks = fake.array(rng.random((1, 18, 6, 10)).astype(dtype), device)
    grad_output = fake.array(rng.standard_normal((1, 4, 6, 10)).astype(dtype), device)
    return grad_output, features, masks


def test_cupy_arrays_on_device_1_run_there_on_its_current_stream(fake_cupy, runtime):
    from carafe_cupy import arrays

    grad_output, features, masks = array_inputs(fake_cupy, DEVICE)
    output = arrays.carafe(features, masks, 3, 2, 2)
    grads = arrays.carafe_backward(grad_output, features, masks, 3, 2, 2)
    assert runtime.launches
    assert {(r.device, r.stream) for r in runtime.launches} == {(1, 0x111)}
    assert [result.device.id for result in (output, *grads)] == [1, 1, 1]
    assert fake_cupy.current == 0  # the caller's current device is left as it was


def test_promoted_cupy_arrays_stay_on_their_device(fake_cupy, runtime):
    from carafe_cupy import arrays

    grad_output, features, masks = array_inputs(fake_cupy, DEVICE)
    features = fake_cupy.array(features._data.astype(np.float16), DEVICE)  # promoted on cuda:1
    grad_features, grad_masks = arrays.carafe_backward(grad_output, features, masks, 3, 2, 2)
    assert (grad_features.dtype, grad_masks.dtype) == (np.float16, np.float32)
    assert (grad_features.device.id, grad_masks.device.id) == (1, 1)
    assert {(r.device, r.stream) for r in runtime.launches} == {(1, 0x111)}


def test_cupy_arrays_on_two_devices_are_refused_before_any_launch(fake_cupy, runtime):
    from carafe_cupy import arrays

    _, features, _ = array_inputs(fake_cupy, 0)
    _, _, masks = array_inputs(fake_cupy, 1)
    with pytest.raises(ValueError, match="one device.*features on cuda:0, masks on cuda:1"):
        arrays.carafe(features, masks, 3, 2, 2)
    assert runtime.launches == []
