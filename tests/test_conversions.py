"""fp16 / bf16 conversions: the GPU's conversion instructions, the simulator's
software rounding, and proof that both give the same bits.

Without a GPU: the PTX NVRTC makes must contain the hardware conversions (bf16
only from sm_80; sm_75 keeps the software rounding). With one: every fp16
pattern widened, and fp32 values of every kind (ties, subnormals, overflow,
NaN, infinities) narrowed, by both paths in the same kernel, bit for bit
(a NaN need only stay a NaN: its payload is unspecified).
"""

from __future__ import annotations

import numpy as np
import pytest

from carafe_cupy._kernels import sources as _sources
from carafe_cupy._kernels.constants import defines
from carafe_cupy._runtime import cupy_runtime as _cupy_runtime

cupy = pytest.importorskip("cupy")
try:
    from cupy.cuda import nvrtc

    nvrtc.getVersion()
except Exception as error:  # no NVRTC library on this machine
    pytest.skip(f"NVRTC not loadable: {error}", allow_module_level=True)


def ptx(arch: str) -> str:
    """The general module's PTX for ``arch`` (its kernels use every dtype)."""
    program = nvrtc.createProgram(_sources.kernel_source(), "carafe.cu", [], [])
    try:
        nvrtc.compileProgram(program, [f"--gpu-architecture={arch}", *_cupy_runtime.NVRTC_OPTIONS])
        text = nvrtc.getPTX(program)
        return text.decode() if isinstance(text, bytes) else text
    finally:
        nvrtc.destroyProgram(program)


@pytest.mark.parametrize("arch", ["compute_75", "compute_80"])
def test_hardware_conversions_in_the_ptx(arch):
    text = ptx(arch)
    assert "cvt.f32.f16" in text and "cvt.rn.f16.f32" in text
    assert ("cvt.rn.bf16.f32" in text) == (arch != "compute_75")


CHECK_SOURCE = r"""
#include "carafe_common.cuh"
extern "C" __global__ void compare(const unsigned short* halves, const float* values,
                                   unsigned int* out, long long n_halves, long long n_values) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n_halves) {
        out[4 * i] = __float_as_uint(half_bits_to_float(halves[i]));
        out[4 * i + 1] = __float_as_uint(half_bits_to_float_software(halves[i]));
    }
    if (i < n_values) {
        const unsigned int h = float_to_half_bits(values[i]);
        const unsigned int h_soft = float_to_half_bits_software(values[i]);
        const unsigned int b = float_to_bfloat16_bits(values[i]);
        const unsigned int b_soft = float_to_bfloat16_bits_software(values[i]);
        out[4 * i + 2] = h | (h_soft << 16);
        out[4 * i + 3] = b | (b_soft << 16);
    }
}
"""


def _narrowing_inputs() -> np.ndarray:
    """fp32 values of every kind: each fp16 / bf16 value and the midpoints and
    near-midpoints around it, random bits, and the special values."""
    rng = np.random.default_rng(0)
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    bfloats = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
    around = []
    for grid, spacing_bits in ((halves, 13), (bfloats, 16)):
        bits = grid.view(np.uint32)
        half_step = np.uint32(1 << (spacing_bits - 1))
        for delta in (-1, 0, 1):
            around.append((bits + half_step + np.uint32(delta % (1 << 32))).view(np.float32))
    random = rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65520.0, 65519.996,
                        2.0**-24, 2.0**-25, 3 * 2.0**-26, 2.0**-14], dtype=np.float32)
    return np.concatenate([halves, bfloats, *around, random.view(np.float32), special])


def _is_nan16(bits: np.ndarray, exponent_mask: int, mantissa_mask: int) -> np.ndarray:
    return ((bits & exponent_mask) == exponent_mask) & ((bits & mantissa_mask) != 0)


@pytest.mark.gpu
@pytest.mark.skipif(not _cupy_runtime.gpu_kernels_available(), reason="no CUDA GPU for CuPy")
def test_hardware_and_software_conversions_agree_on_the_gpu():
    halves = cupy.asarray(np.arange(1 << 16, dtype=np.uint16))
    values = cupy.asarray(_narrowing_inputs())
    n = max(halves.size, values.size)
    out = cupy.zeros(4 * n, dtype=cupy.uint32)
    common = (_sources.cuda_source_dir() / "carafe_common.cuh").read_text()
    source = defines() + CHECK_SOURCE.replace('#include "carafe_common.cuh"', common)
    # compiled and loaded as the kernels are: the same options, target and loader
    kernel = _cupy_runtime.CupyRuntime().kernel("conversion_check", source, "compare", 0)
    kernel(((n + 255) // 256,), (256,), (halves, values, out, np.int64(halves.size),
                                         np.int64(values.size)))
    result = cupy.asnumpy(out).reshape(n, 4)
    widened = result[: halves.size, :2]
    nan = np.isnan(widened.view(np.float32))
    assert (nan[:, 0] == nan[:, 1]).all()
    assert (widened[~nan[:, 0], 0] == widened[~nan[:, 0], 1]).all()
    for column, (exponent, mantissa) in ((2, (0x7C00, 0x03FF)), (3, (0x7F80, 0x007F))):
        pair = result[: values.size, column]
        hardware, software = pair & 0xFFFF, pair >> 16
        nan = _is_nan16(software, exponent, mantissa)
        assert (_is_nan16(hardware, exponent, mantissa) == nan).all()
        differ = (hardware != software) & ~nan
        assert not differ.any(), f"column {column}: {int(differ.sum())} values round differently"
