"""The binary that runs is the binary that is checked, and it keeps IEEE subnormals.

With the real NVRTC and no GPU (a fake device and module loader, tests/fake_cuda.py):
the runtime compiles with NVRTC itself, so it needs no CUDA headers (CuPy's header
lookup finding nothing changes nothing), and loads exactly the bytes the offline checks
and the cost model read; the PTX it would load on a GPU newer than NVRTC carries no
flush-to-zero arithmetic.
"""

from __future__ import annotations

import re

import pytest
from fake_cuda import NVRTC_12_ARCHS, FakeCupy, FakeNvrtc

from carafe_cupy._kernels import sources as _sources
from carafe_cupy._runtime import binaries as _binaries
from carafe_cupy._runtime import cupy_runtime as _cupy_runtime
from carafe_cupy._runtime import gpu_checks as _gpu_checks

cupy = pytest.importorskip("cupy")
try:
    from cupy.cuda import nvrtc

    nvrtc.getVersion()
except Exception as error:  # no NVRTC library on this machine
    pytest.skip(f"NVRTC not loadable: {error}", allow_module_level=True)

HEADERS_ERROR = "Failed to find CUDA headers. Please install the CUDA Toolkit or set CUDA_PATH"
TILED = "carafe_tiled_float32_k3"
# expf's IEEE sequence (libdevice) raises 2 to the reduced argument's fraction with
# ex2.approx.ftz, whose result lies in [0.5, 2], then scales it by 2^n with a plain
# multiply, which rounds to a subnormal where the true result is one: the only .ftz
# an IEEE build has.
ALLOWED_FTZ = {"ex2.approx.ftz.f32"}


def flushing_instructions(ptx: str) -> set[str]:
    """The PTX instructions that flush subnormals, outside ALLOWED_FTZ."""
    found = {
        match.group(1)
        for match in re.finditer(r"^\s*(?:@!?%p\d+\s+)?(\S*\.ftz\S*)", ptx, re.MULTILINE)
    }
    return found - ALLOWED_FTZ


@pytest.fixture
def no_cuda_headers(monkeypatch):
    """CuPy finds no CUDA toolkit, and its own compile path fails as it does then."""

    def fail(*args, **kwargs):
        raise RuntimeError(HEADERS_ERROR)

    monkeypatch.setattr(cupy._environment, "get_cuda_path", lambda: None)
    monkeypatch.setattr(cupy.cuda, "get_cuda_path", lambda: None)
    for name in ("RawModule", "RawKernel"):
        monkeypatch.setattr(cupy, name, fail)
    monkeypatch.setattr(cupy.cuda.compiler, "compile_using_nvrtc", fail)
    monkeypatch.setattr(cupy.cuda.compiler, "_compile_module_with_cache", fail)


def test_the_runtime_loads_the_binary_the_checks_read_without_headers(monkeypatch, no_cuda_headers):
    fake = FakeCupy([80], nvrtc)  # a fake sm_80 and module loader, the real NVRTC
    monkeypatch.setattr(_cupy_runtime, "_import_cupy", lambda: fake)
    monkeypatch.setattr(_cupy_runtime, "_probes", {})
    assert _cupy_runtime.gpu_kernels_unavailable_reason(0) is None
    runtime = _cupy_runtime.CupyRuntime()
    name = _sources.module_kernel_names(TILED)[0]
    args = ((1, 1, 1), (256, 1, 1), ())
    runtime.launch(TILED, _sources.kernel_source(TILED), name, *args, 0, 0, 0)
    (probe_device, probe), (device, image) = fake.loads
    assert image.startswith(b"\x7fELF") and device == 0
    log, cubin = _cupy_runtime.compile_offline_cubin("sm_80", TILED)
    assert image == cubin
    assert f"Compiling entry function '{name}' for 'sm_80'" in log


def test_one_option_set_for_every_target():
    options = _sources.NVRTC_OPTIONS
    for flag in ("-ftz=false", "-prec-div=true", "-prec-sqrt=true", "-fmad=true"):
        assert flag in options
    for target in (_binaries.Target(80), _binaries.Target(90, ptx=True)):
        compiled = _binaries.compile_options(target)
        assert compiled[1:] == list(options)
        assert [flag for flag in compiled if flag.startswith("-ftz")] == ["-ftz=false"]


@pytest.mark.parametrize("module", _sources.all_module_names())
def test_the_ptx_loaded_on_a_gpu_newer_than_nvrtc_keeps_subnormals(module):
    # sm_120 with NVRTC 12.4: the runtime loads PTX for compute_90
    target = _gpu_checks.compile_target(FakeCupy([120], FakeNvrtc((12, 4), NVRTC_12_ARCHS)), 0)
    assert target == _binaries.Target(90, ptx=True)
    ptx = _cupy_runtime.module_binary(target, module).image.decode()
    assert ".target sm_90" in ptx
    assert flushing_instructions(ptx) == set()


def test_the_subnormal_check_sees_flush_to_zero():
    source = 'extern "C" __global__ void k(float* x) { x[0] = x[1] * x[2] + expf(x[3]); }'
    for ftz, expected in (("true", {"mul.ftz.f32", "fma.rn.ftz.f32"}), ("false", set())):
        program = nvrtc.createProgram(source, "k.cu", [], [])
        try:
            nvrtc.compileProgram(program, ["--gpu-architecture=compute_90", f"-ftz={ftz}"])
            ptx = nvrtc.getPTX(program)
        finally:
            nvrtc.destroyProgram(program)
        found = flushing_instructions(ptx.decode() if isinstance(ptx, bytes) else ptx)
        assert expected <= found if expected else found == set()
