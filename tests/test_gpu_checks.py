"""GPU-side decisions, checked on the CPU with a fake CuPy (tests/fake_cuda.py): NVRTC's
range (V100 with NVRTC 13, sm_120 with NVRTC 12.4), the target each GPU gets, a compile or
load that fails (no CUDA headers, a driver that refuses the binary) turned into a fallback
with one warning, and kernels first used inside a CUDA graph capture."""

from __future__ import annotations

import warnings

import pytest
from fake_cuda import NVRTC_12_ARCHS, NVRTC_13_ARCHS, FakeCupy, FakeNvrtc

from carafe_cupy import KernelsUnavailableError
from carafe_cupy._runtime import binaries as _binaries
from carafe_cupy._runtime import cupy_runtime as _cupy_runtime
from carafe_cupy._runtime import gpu_checks as _gpu_checks
from carafe_cupy._runtime import launch as _launch

HEADERS_ERROR = RuntimeError(
    "Failed to find CUDA headers. Please install the CUDA Toolkit or set CUDA_PATH"
)


def fake_cupy(capabilities, nvrtc=(13, 0), archs=NVRTC_13_ARCHS, **options):
    return FakeCupy(capabilities, FakeNvrtc(nvrtc, archs), **options)


@pytest.fixture
def install(monkeypatch, tmp_path):
    """Put a fake CuPy in, with a fresh kernel cache and fresh availability answers."""
    monkeypatch.setenv("CARAFE_CUPY_KERNEL_CACHE", str(tmp_path / "kernels"))

    def reset():
        _cupy_runtime._cupy_stream.cache_clear()
        _cupy_runtime._probes.clear()
        _binaries._memory.clear()
        try:
            from carafe_cupy._torch import common as _torch_common
        except ImportError:
            return
        _torch_common._gpu_kernels_available.cache_clear()
        _torch_common._kernels_target.cache_clear()
        _torch_common._failed_devices.clear()

    def use(cupy):
        monkeypatch.setattr(_cupy_runtime, "_import_cupy", lambda: cupy)
        reset()
        return cupy

    yield use
    reset()


def test_v100_with_nvrtc_13_reports_no_kernels_and_names_the_cuda12_extra(install):
    install(fake_cupy([70]))
    assert not _cupy_runtime.gpu_kernels_available()
    reason = _cupy_runtime.gpu_kernels_unavailable_reason()
    assert "sm_70" in reason and "sm_75" in reason and '".[cuda12]"' in reason


@pytest.mark.parametrize(
    "capability, nvrtc, archs, available",
    [
        (70, (12, 8), NVRTC_12_ARCHS, True),
        (75, (13, 0), NVRTC_13_ARCHS, True),
        (120, (12, 4), NVRTC_12_ARCHS, True),  # newer than NVRTC: PTX the driver compiles
        (70, (13, 1), None, False),  # no getSupportedArchs: NVRTC 13's known range
        (70, (12, 0), None, True),
    ],
)
def test_nvrtc_range_against_the_compute_capability(install, capability, nvrtc, archs, available):
    install(fake_cupy([capability], nvrtc=nvrtc, archs=archs))
    assert _cupy_runtime.gpu_kernels_available() is available
    assert _cupy_runtime.gpu_kernels_available(0) is available


@pytest.mark.parametrize(
    "capability, nvrtc, archs, target",
    [
        (80, (13, 0), NVRTC_13_ARCHS, "sm_80"),
        (120, (13, 0), NVRTC_13_ARCHS, "sm_120"),
        (120, (12, 4), NVRTC_12_ARCHS, "compute_90"),  # sm_90 cubins do not load on sm_120
        (100, (12, 4), None, "compute_90"),  # CuPy without getSupportedArchs
        (121, (12, 8), (75, 80, 86, 89, 90, 100, 120), "sm_120"),  # a cubin runs on its major
        (89, (12, 4), (75, 80, 86, 90), "sm_80"),
        (120, (12, 9), None, "sm_120"),
    ],
)
def test_each_gpu_gets_a_target_it_can_load(install, capability, nvrtc, archs, target):
    cupy = install(fake_cupy([capability], nvrtc=nvrtc, archs=archs))
    assert _gpu_checks.compile_target(cupy, 0).name == target


def test_sm120_with_nvrtc_12_4_loads_ptx_for_compute_90(install):
    cupy = install(fake_cupy([120], nvrtc=(12, 4), archs=NVRTC_12_ARCHS))
    runtime = _cupy_runtime.CupyRuntime()
    _launch_once(runtime)
    ((device, image),) = cupy.loads
    assert device == 0 and image.startswith(b"// FAKE-PTX carafe.cu")
    assert b"--gpu-architecture=compute_90" in image and image.endswith(b"\0")


def test_info_names_each_gpus_binary(install):
    from carafe_cupy._cli import check as _check

    install(fake_cupy([120, 70], nvrtc=(12, 4), archs=NVRTC_12_ARCHS[7:]))
    lines = _check.info_lines()
    assert "cuda:0 kernels: PTX for compute_90, compiled by the driver when loaded" in lines
    (line,) = [line for line in lines if line.startswith("cuda:1 kernels: unavailable:")]
    assert "sm_70" in line and "sm_72" in line
    assert any(line.startswith("NVRTC options: -std=c++17 -ftz=false") for line in lines)
    assert _check.cupy_arrays_line() == "cuda kernels"


def test_a_driver_that_cannot_load_the_ptx_is_reported_with_the_fix(install):
    error = RuntimeError("CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the provided PTX was compiled ...")
    install(fake_cupy([120], nvrtc=(12, 4), archs=NVRTC_12_ARCHS, load_error=error))
    assert _cupy_runtime.gpu_kernels_available()  # no GPU is touched without a device
    reason = _cupy_runtime.gpu_kernels_unavailable_reason(0)
    assert "cuda:0" in reason and "PTX for compute_90" in reason
    assert "UNSUPPORTED_PTX_VERSION" in reason and "update the NVIDIA driver" in reason
    runtime = _cupy_runtime.CupyRuntime()
    with pytest.raises(KernelsUnavailableError, match="update the NVIDIA driver"):
        _launch_once(runtime)


def test_mixed_gpus_are_judged_one_by_one(install):
    install(fake_cupy([70, 80]))
    assert _cupy_runtime.gpu_kernels_available()
    assert not _cupy_runtime.gpu_kernels_available(0)
    assert _cupy_runtime.gpu_kernels_available(1)


# ------------------------------------------------ a compile that fails (no headers)


def test_a_compile_without_cuda_headers_makes_the_kernels_unavailable(install):
    cupy = install(fake_cupy([80]))
    cupy.nvrtc.compile_error = HEADERS_ERROR
    reason = _cupy_runtime.gpu_kernels_unavailable_reason()
    assert "Failed to find CUDA headers" in reason and '".[cuda13]"' in reason
    assert not _cupy_runtime.gpu_kernels_available(0)
    runtime = _cupy_runtime.CupyRuntime()
    with pytest.raises(KernelsUnavailableError, match="Failed to find CUDA headers"):
        _launch_once(runtime)
    assert not cupy.loads


def test_info_says_what_to_install_when_the_compile_fails(install):
    from carafe_cupy._cli import check as _check

    cupy = install(fake_cupy([80]))
    cupy.nvrtc.compile_error = HEADERS_ERROR
    line = _check.cupy_arrays_line()
    assert line.startswith("unavailable:") and "Failed to find CUDA headers" in line
    assert 'pip install ".[cuda13]"' in line


def test_torch_falls_back_with_one_warning_when_the_compile_fails(install):
    torch = pytest.importorskip("torch")
    from carafe_cupy._torch import common as _torch_common

    cupy = install(fake_cupy([80]))
    cupy.nvrtc.compile_error = HEADERS_ERROR
    with pytest.warns(RuntimeWarning, match="Failed to find CUDA headers") as caught:
        assert not _torch_common.uses_kernels(torch.device("cuda", 0))
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _torch_common.uses_kernels(torch.device("cuda", 0))


def test_a_failure_found_at_launch_falls_back_with_one_warning(install, monkeypatch):
    torch = pytest.importorskip("torch")
    from carafe_cupy._torch import common as _torch_common
    from carafe_cupy._torch import ops as _ops

    install(fake_cupy([80]))
    error = KernelsUnavailableError("carafe_cupy: cuda:0 could not load carafe (...).")
    monkeypatch.setattr(_ops, "uses_kernels", lambda device: True)

    def refuse(*args):
        raise error

    monkeypatch.setattr(_ops._launch, "launch_forward", refuse)
    features, masks = torch.rand(1, 2, 3, 3), torch.rand(1, 9, 6, 6)
    with pytest.warns(RuntimeWarning, match="could not load carafe") as caught:
        output = _ops.forward_op(features, masks, 3, 1, 2)
    assert len(caught) == 1
    expected = _ops._cpu_path.cpu_forward(features, masks, 3, 1, 2, 1, 1)
    torch.testing.assert_close(output, expected)
    assert not _torch_common.uses_kernels(torch.device("cuda", 0))  # from now on


# ------------------------------------------------ torch's one warning per device


def test_torch_tensors_on_an_untargetable_gpu_take_the_pytorch_path_with_one_warning(install):
    torch = pytest.importorskip("torch")
    from carafe_cupy._torch import common as _torch_common

    install(fake_cupy([70, 80]))
    with pytest.warns(RuntimeWarning, match=r"sm_70.*\.\[cuda12\]") as caught:
        assert not _torch_common.uses_kernels(torch.device("cuda", 0))
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _torch_common.uses_kernels(torch.device("cuda", 0))  # warned once only
        assert _torch_common.uses_kernels(torch.device("cuda", 1))
    assert not _torch_common.uses_kernels(torch.device("cpu"))


def test_every_gpu_untargetable_warns_with_the_reason(install):
    torch = pytest.importorskip("torch")
    from carafe_cupy._torch import common as _torch_common

    install(fake_cupy([70]))
    with pytest.warns(RuntimeWarning, match=r"NVRTC 13\.0 cannot compile for cuda:0 \(sm_70\)"):
        assert not _torch_common.uses_kernels(torch.device("cuda", 0))


# ------------------------------------------------ launching


def _launch_once(runtime, stream=7):
    args = (_launch.KERNEL_MODULE, "source", "carafe_forward_float32", (1, 1, 1), (32, 1, 1), ())
    runtime.launch(*args, 0, 0, stream)


def test_the_cupy_front_end_refuses_an_untargetable_gpu_before_compiling(install):
    cupy = install(fake_cupy([70]))
    runtime = _cupy_runtime.CupyRuntime()
    with pytest.raises(KernelsUnavailableError, match=r"sm_70.*cuda12"):
        _launch_once(runtime)
    assert runtime.compile_count == 0 and not cupy.nvrtc.compiles


def test_a_first_call_inside_a_graph_capture_says_to_warm_up(install):
    install(fake_cupy([80], capturing=True))
    runtime = _cupy_runtime.CupyRuntime()
    with pytest.raises(_gpu_checks.KernelNotReadyForCaptureError, match="before capturing"):
        _launch_once(runtime)
    assert runtime.compile_count == 0


def test_every_kernel_of_a_loaded_module_launches_during_a_capture(install):
    cupy = install(fake_cupy([80]))
    runtime = _cupy_runtime.CupyRuntime()
    _launch_once(runtime, stream=0)  # the warm-up: loads the module
    cupy.cuda.runtime.streamIsCapturing = lambda stream: 1
    args = ((1, 1, 1), (32, 1, 1), ())
    runtime.launch(_launch.KERNEL_MODULE, "source", "carafe_backward_masks_float64", *args, 0, 0, 7)
    assert [launch[1] for launch in cupy.launches] == [
        "carafe_forward_float32",
        "carafe_backward_masks_float64",
    ]
    assert runtime.compile_count == 1


def test_the_legacy_default_stream_is_never_asked_about_capture(install):
    cupy = install(fake_cupy([80], capturing=True))
    cupy.cuda.runtime.streamIsCapturing = lambda stream: pytest.fail("asked about stream 0")
    runtime = _cupy_runtime.CupyRuntime()
    _launch_once(runtime, stream=0)
    assert runtime.compile_count == 1
