"""GPU-side decisions, checked on the CPU with a fake CuPy: NVRTC's oldest target
(V100 with NVRTC 13) and kernels first used inside a CUDA graph capture."""

from __future__ import annotations

import contextlib
import warnings
from types import SimpleNamespace

import pytest

from carafe_cupy import KernelsUnavailableError
from carafe_cupy._runtime import cupy_runtime as _cupy_runtime
from carafe_cupy._runtime import gpu_checks as _gpu_checks
from carafe_cupy._runtime import launch as _launch

NVRTC_13_ARCHS = (75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121)
NVRTC_12_ARCHS = (50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90)


def fake_cupy(capabilities, nvrtc=(13, 0), archs=NVRTC_13_ARCHS, capturing=False):
    """Just the parts of CuPy the checks and the launch read."""
    launched = []

    class Device:
        def __init__(self, index):
            self.compute_capability = str(capabilities[index])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    nvrtc_module = SimpleNamespace(getVersion=lambda: nvrtc)
    if archs is not None:
        nvrtc_module.getSupportedArchs = lambda: archs
    runtime = SimpleNamespace(
        getDeviceCount=lambda: len(capabilities),
        streamIsCapturing=lambda stream: 1 if capturing else 0,
    )
    stream_class = SimpleNamespace(from_external=lambda handle: contextlib.nullcontext())
    cuda = SimpleNamespace(nvrtc=nvrtc_module, runtime=runtime, Device=Device, Stream=stream_class)
    return SimpleNamespace(cuda=cuda, launched=launched)


@pytest.fixture
def install(monkeypatch):
    def use(cupy):
        monkeypatch.setattr(_cupy_runtime, "_import_cupy", lambda: cupy)
        _cupy_runtime._cupy_stream.cache_clear()
        return cupy

    yield use
    _cupy_runtime._cupy_stream.cache_clear()


def test_v100_with_nvrtc_13_reports_no_kernels_and_names_the_cuda12_extra(install):
    install(fake_cupy([70]))
    assert not _cupy_runtime.gpu_kernels_available()
    reason = _cupy_runtime.gpu_kernels_unavailable_reason()
    assert "sm_70" in reason and "sm_75" in reason and "carafe_cupy[cuda12]" in reason


@pytest.mark.parametrize(
    "capability, nvrtc, archs, available",
    [
        (70, (12, 8), NVRTC_12_ARCHS, True),
        (75, (13, 0), NVRTC_13_ARCHS, True),
        (120, (12, 4), NVRTC_12_ARCHS, True),  # newer than NVRTC: CuPy compiles for its newest
        (70, (13, 1), None, False),  # no getSupportedArchs: NVRTC 13's known range
        (70, (12, 0), None, True),
    ],
)
def test_nvrtc_range_against_the_compute_capability(install, capability, nvrtc, archs, available):
    install(fake_cupy([capability], nvrtc=nvrtc, archs=archs))
    assert _cupy_runtime.gpu_kernels_available() is available
    assert _cupy_runtime.gpu_kernels_available(0) is available


def test_mixed_gpus_are_judged_one_by_one(install):
    install(fake_cupy([70, 80]))
    assert _cupy_runtime.gpu_kernels_available()
    assert not _cupy_runtime.gpu_kernels_available(0)
    assert _cupy_runtime.gpu_kernels_available(1)


def test_torch_tensors_on_an_untargetable_gpu_take_the_pytorch_path_with_one_warning(install):
    torch = pytest.importorskip("torch")
    from carafe_cupy._torch import common as _torch_common

    install(fake_cupy([70, 80]))
    _torch_common._gpu_kernels_available.cache_clear()
    _torch_common._kernels_target.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"sm_70.*carafe_cupy\[cuda12\]") as caught:
            assert not _torch_common.uses_kernels(torch.device("cuda", 0))
        assert len(caught) == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not _torch_common.uses_kernels(torch.device("cuda", 0))  # warned once only
            assert _torch_common.uses_kernels(torch.device("cuda", 1))
        assert not _torch_common.uses_kernels(torch.device("cpu"))
    finally:
        _torch_common._gpu_kernels_available.cache_clear()
        _torch_common._kernels_target.cache_clear()


def test_every_gpu_untargetable_warns_with_the_reason(install):
    torch = pytest.importorskip("torch")
    from carafe_cupy._torch import common as _torch_common

    install(fake_cupy([70]))
    _torch_common._gpu_kernels_available.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"NVRTC 13\.0 cannot compile for cuda:0 \(sm_70\)"):
            assert not _torch_common.uses_kernels(torch.device("cuda", 0))
    finally:
        _torch_common._gpu_kernels_available.cache_clear()
        _torch_common._kernels_target.cache_clear()


def _launch_once(runtime, stream=7):
    args = (_launch.KERNEL_MODULE, "source", "carafe_forward_float32", (1, 1, 1), (32, 1, 1), ())
    runtime.launch(*args, 0, 0, stream)


def test_the_cupy_front_end_refuses_an_untargetable_gpu_before_compiling(install):
    install(fake_cupy([70]))
    runtime = _cupy_runtime.CupyRuntime()
    with pytest.raises(KernelsUnavailableError, match=r"sm_70.*cuda12"):
        _launch_once(runtime)
    assert runtime.compile_count == 0


def test_a_first_call_inside_a_graph_capture_says_to_warm_up(install):
    install(fake_cupy([80], capturing=True))
    runtime = _cupy_runtime.CupyRuntime()
    with pytest.raises(_gpu_checks.KernelNotReadyForCaptureError, match="before capturing"):
        _launch_once(runtime)
    assert runtime.compile_count == 0


def test_a_compiled_kernel_launches_during_a_capture(install):
    install(fake_cupy([80], capturing=True))
    runtime = _cupy_runtime.CupyRuntime()
    calls = []
    key = (0, _launch.KERNEL_MODULE, "carafe_forward_float32")
    runtime._kernels[key] = lambda grid, block, args, shared_mem: calls.append((grid, block))
    _launch_once(runtime)
    assert calls == [((1, 1, 1), (32, 1, 1))]


def test_the_legacy_default_stream_is_never_asked_about_capture(install):
    cupy = install(fake_cupy([80], capturing=True))
    cupy.cuda.runtime.streamIsCapturing = lambda stream: pytest.fail("asked about stream 0")
    runtime = _cupy_runtime.CupyRuntime()
    compiled = []
    runtime._compile = lambda *args: compiled.append(args) or (lambda *a, **k: None)
    _launch_once(runtime, stream=0)
    assert len(compiled) == 1
