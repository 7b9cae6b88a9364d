"""The fp16 / bf16 conversions of cuda_src/carafe_common.cuh, exhaustively on the CPU.

The kernels' ``storage<half_bits>`` and ``storage<bfloat16_bits>`` load and store
through these conversions; compiled by the host compiler (the simulator's build)
they take the software path, which the simulator and sm_75's bf16 stores use
(newer GPUs use the hardware instruction: test_conversions.py). A small harness
of the real header runs, in one launch each:

* widening: every one of the 65536 fp16 and bf16 bit patterns;
* narrowing: every fp16 and bf16 value; the exact midpoint between each pair of
  neighbours (ties, to even), including the overflow thresholds (65520 for
  fp16) and the zero / subnormal / normal boundaries, and one fp32 ulp either
  side of each; every fp32 exponent with every combination of the 11 bits below
  the hidden bit and the three decisive low patterns (zero, one, all ones);
  every fp32 pattern near 65504..65536 and 2**-14; a million random values;
  signed zeros, infinities and NaNs with assorted payloads.

Each result must equal numpy's and torch's rounding bit for bit; a NaN need only
stay a NaN (its payload is unspecified: the GPU writes its canonical NaN).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from carafe_cupy._kernels import sources as _sources  # noqa: E402
from carafe_cupy._kernels.constants import defines  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)

HARNESS = r"""
extern "C" __global__ void widen(const unsigned short* bits, float* halves, float* bfloats,
                                 long long n) {
    for (long long i = global_thread_index(); i < n; i += grid_stride()) {
        half_bits h;
        bfloat16_bits b;
        h.bits = b.bits = bits[i];
        halves[i] = storage<half_bits>::load(&h);
        bfloats[i] = storage<bfloat16_bits>::load(&b);
    }
}

extern "C" __global__ void narrow(const float* values, unsigned short* halves,
                                  unsigned short* bfloats, long long n) {
    for (long long i = global_thread_index(); i < n; i += grid_stride()) {
        half_bits h;
        bfloat16_bits b;
        storage<half_bits>::store(&h, values[i]);
        storage<bfloat16_bits>::store(&b, values[i]);
        halves[i] = h.bits;
        bfloats[i] = b.bits;
    }
}
"""


def harness_source() -> str:
    common = (_sources.cuda_source_dir() / "carafe_common.cuh").read_text()
    return defines() + common + HARNESS


def launch(kernel: str, inputs: np.ndarray, outputs: list[np.ndarray]) -> None:
    from carafe_cupy._sim import SimRuntime

    pointers = [np.uint64(array.ctypes.data) for array in (inputs, *outputs)]
    SimRuntime().launch(
        "conversion_harness",
        harness_source(),
        kernel,
        (1024, 1, 1),
        (256, 1, 1),
        (*pointers, np.int64(inputs.size)),
    )


def bits32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).view(np.uint32)


def from_bits(bits) -> np.ndarray:
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


ALL16 = np.arange(1 << 16, dtype=np.uint32)
FP16 = ALL16.astype(np.uint16).view(np.float16)
BF16_AS_FP32 = from_bits(ALL16 << 16)  # exact: a bf16 is the top half of an fp32


def ties_and_neighbours(finite: np.ndarray, beyond: float) -> np.ndarray:
    """Midpoints between neighbouring non-negative values of a format (and between
    its largest value and ``beyond``, where rounding overflows), one fp32 ulp
    either side of each, and the negatives of all three."""
    grid = np.unique(np.abs(finite.astype(np.float64)))
    grid = np.append(grid, beyond)
    middle = (grid[:-1] + grid[1:]) / 2  # needs p + 1 bits: exact in fp32
    exact = middle.astype(np.float32)
    assert (exact.astype(np.float64) == middle).all()
    around = [
        np.nextafter(exact, np.float32(-np.inf)),
        exact,
        np.nextafter(exact, np.float32(np.inf)),
    ]
    values = np.concatenate(around)
    return np.concatenate([values, -values])


def exponent_sweep(rng) -> np.ndarray:
    """Every fp32 exponent (random signs), with all 2**11 patterns of the mantissa's
    top 11 bits (the kept bits and the rounding bit of both formats, normal or
    subnormal) and low 12 bits of 0, 1 or all ones (exact tie, just above, just below)."""
    exponent = np.arange(256, dtype=np.uint32)[:, None, None] << 23
    top = np.arange(1 << 11, dtype=np.uint32)[None, :, None] << 12
    low = np.array([0, 1, 0xFFF], dtype=np.uint32)[None, None, :]
    bits = (exponent | top | low).ravel()
    sign = rng.integers(0, 2, size=bits.size, dtype=np.uint32) << 31
    return from_bits(bits | sign)


def dense_range(first: int, last: int) -> np.ndarray:
    """Every fp32 pattern from ``first`` to ``last`` (inclusive), both signs."""
    bits = np.arange(first, last + 1, dtype=np.uint32)
    return from_bits(np.concatenate([bits, bits | np.uint32(1 << 31)]))


def random_values(rng) -> np.ndarray:
    """Half uniform fp32 bit patterns, half with exponents around fp16's range."""
    uniform = rng.integers(0, 1 << 32, size=1 << 19, dtype=np.uint64).astype(np.uint32)
    exponent = rng.integers(100, 146, size=1 << 19, dtype=np.uint32) << 23
    mantissa = rng.integers(0, 1 << 23, size=1 << 19, dtype=np.uint32)
    sign = rng.integers(0, 2, size=1 << 19, dtype=np.uint32) << 31
    return np.concatenate([from_bits(uniform), from_bits(sign | exponent | mantissa)])


SPECIAL_BITS = {
    "signed zeros and infinities": [0x00000000, 0x80000000, 0x7F800000, 0xFF800000],
    "quiet NaNs": [0x7FC00000, 0xFFC00000, 0x7FFFFFFF, 0xFFFFFFFF],
    "signalling NaNs": [0x7F800001, 0xFF800001, 0x7F801FFF, 0x7F802000, 0x7F80FFFF, 0x7FA00000],
    "fp32 edges": [0x00000001, 0x80000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF],
}


def narrowing_sets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2024)
    finite16 = FP16[np.isfinite(FP16)]
    finite_bf16 = BF16_AS_FP32[np.isfinite(BF16_AS_FP32)]
    return {
        "fp16-values": FP16.astype(np.float32),
        "bf16-values": BF16_AS_FP32,
        "fp16-ties": ties_and_neighbours(finite16, 65536.0),
        "bf16-ties": ties_and_neighbours(finite_bf16, 2.0**128),
        "exponents": exponent_sweep(rng),
        "fp16-overflow": dense_range(0x477FD000, 0x47802000),  # 65504 - 16 .. 65536 + 64
        "fp16-normal-boundary": dense_range(0x387FC000, 0x38804000),  # around 2**-14
        "fp16-underflow": dense_range(0x32FFC000, 0x33004000),  # around 2**-25
        "random": random_values(rng),
        "special": from_bits(sum(SPECIAL_BITS.values(), [])),
    }


@pytest.fixture(scope="module")
def widened():
    halves = np.full(ALL16.size, np.nan, np.float32)
    bfloats = np.full(ALL16.size, np.nan, np.float32)
    launch("widen", ALL16.astype(np.uint16), [halves, bfloats])
    return {"float16": halves, "bfloat16": bfloats}


@pytest.fixture(scope="module")
def narrowed():
    sets = narrowing_sets()
    values = np.ascontiguousarray(np.concatenate(list(sets.values())))
    halves = np.zeros(values.size, np.uint16)
    bfloats = np.zeros(values.size, np.uint16)
    launch("narrow", values, [halves, bfloats])
    results, start = {}, 0
    for name, chunk in sets.items():
        stop = start + chunk.size
        results[name] = (chunk, {"float16": halves[start:stop], "bfloat16": bfloats[start:stop]})
        start = stop
    return results


def assert_same(got: np.ndarray, want: np.ndarray, inputs: np.ndarray, what: str) -> None:
    """Bit-equal where ``want`` is a number; NaN exactly where ``want`` is NaN."""
    got_nan, want_nan = np.isnan(got), np.isnan(want)
    bits = {2: np.uint16, 4: np.uint32}[got.itemsize]
    differ = (got_nan != want_nan) | (~want_nan & (got.view(bits) != want.view(bits)))
    if differ.any():
        first = np.flatnonzero(differ)[:5]
        examples = ", ".join(
            f"{inputs.view(np.uint32 if inputs.itemsize == 4 else np.uint16)[i]:#x} -> "
            f"{got.view(bits)[i]:#x} (want {want.view(bits)[i]:#x})"
            for i in first
        )
        raise AssertionError(f"{what}: {int(differ.sum())} of {got.size} differ: {examples}")


def test_widening_every_fp16_pattern(widened):
    patterns = ALL16.astype(np.uint16)
    assert_same(widened["float16"], FP16.astype(np.float32), patterns, "fp16 -> fp32 vs numpy")
    by_torch = torch.from_numpy(patterns.view(np.int16)).view(torch.float16).float().numpy()
    assert_same(widened["float16"], by_torch, patterns, "fp16 -> fp32 vs torch")
    # subnormals are kept (not flushed): 2**-24 and the largest one, both signs
    for pattern, value in ((0x0001, 2.0**-24), (0x03FF, 1023 * 2.0**-24), (0x8001, -(2.0**-24))):
        assert widened["float16"][pattern] == np.float32(value)


def test_widening_every_bf16_pattern(widened):
    patterns = ALL16.astype(np.uint16)
    by_torch = torch.from_numpy(patterns.view(np.int16)).view(torch.bfloat16).float().numpy()
    assert_same(widened["bfloat16"], by_torch, patterns, "bf16 -> fp32 vs torch")


NARROWING_SETS = list(narrowing_sets())


@pytest.mark.parametrize("name", NARROWING_SETS)
def test_narrowing_to_fp16_rounds_like_numpy_and_torch(narrowed, name):
    values, got = narrowed[name]
    with np.errstate(over="ignore", invalid="ignore"):
        by_numpy = values.astype(np.float16)
    by_torch = torch.from_numpy(values).to(torch.float16).numpy()
    assert_same(by_numpy, by_torch, values, f"{name}: numpy and torch disagree")
    assert_same(got["float16"].view(np.float16), by_numpy, values, f"{name}: fp32 -> fp16")


@pytest.mark.parametrize("name", NARROWING_SETS)
def test_narrowing_to_bf16_rounds_like_torch(narrowed, name):
    values, got = narrowed[name]
    want = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got_float = from_bits(got["bfloat16"].astype(np.uint32) << 16)
    assert_same(got_float, from_bits(want.astype(np.uint32) << 16), values, f"{name}: fp32 -> bf16")


def test_the_inputs_reach_the_cases_they_are_for(narrowed):
    """Ties that round down and up, both overflow sides and subnormal results occur."""
    ties, _ = narrowed["fp16-ties"]
    exact = ties.astype(np.float64)
    with np.errstate(over="ignore"):
        rounded = ties.astype(np.float16).astype(np.float64)
        mirror = 2 * exact - rounded  # the other neighbour, for a tie
        representable = mirror.astype(np.float16).astype(np.float64) == mirror
    assert ((mirror != rounded) & representable & np.isfinite(rounded)).sum() > 60000
    overflow, results = narrowed["fp16-overflow"]
    half = results["float16"].view(np.float16)
    assert {65504.0, np.inf, -np.inf, -65504.0} <= set(half.astype(np.float64).tolist())
    assert (np.abs(overflow[np.isinf(half)]) >= 65520).all()
    assert np.isin(np.float32(65519.996), overflow) and np.isin(np.float32(65520), overflow)
    underflow, results = narrowed["fp16-underflow"]
    assert set(results["float16"].tolist()) >= {0x0000, 0x0001, 0x8000, 0x8001}
