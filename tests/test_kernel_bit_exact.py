"""fp16 / bf16 kernels are bit-exact: the fp32 kernel on the upcast inputs,
rounded by torch to the storage dtype.

The low-precision kernels load exactly (every fp16 / bf16 value is an fp32
value), accumulate in fp32 in the same order as the fp32 kernel of the same
variant and tiling (the planner sizes tiles by accumulator width, the same for
all three), and round once when storing. So each output, and both gradients,
must equal torch's round-to-nearest-even of the fp32 result, bit for bit:
no tolerance. Inputs include exact ties (products that land halfway between two
representable values) and values in the dtype's subnormal range; the tests
check that such outputs really occur. Only finite inputs: a NaN's payload is
not specified by either rounding, so NaN / Inf patterns are checked by value
in test_kernel_extremes.py.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import kernel_harness as harness  # noqa: E402

from carafe_cupy._plan import planner as _planner  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)

@pytest.fixture(autouse=True)
def gradual_underflow():
    """Subnormals as IEEE says, in torch and in the simulated kernels (same
    thread): something earlier in the process (the demo does) may have turned
    on flush-to-zero, which would make the subnormal cases test nothing."""
    flushing = torch.tensor([2.0**-130]).mul(1.0).item() == 0.0
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(flushing)


LOW_PRECISION = {"float16": torch.float16, "bfloat16": torch.bfloat16}
SIGNIFICAND_BITS = {"float16": 11, "bfloat16": 8}
SMALLEST_SUBNORMAL = {"float16": 2.0**-24, "bfloat16": 2.0**-133}
# every kernel family, and k = 1, s = 4 pairs, fused k = 5 and 7 at odd s
CASES = harness.VARIANT_CASES + [
    ("general", (1, 2, 3, 4, 1, 1, 3)),
    ("tiled_pair", (1, 2, 2, 4, 5, 1, 4)),
    ("fused", (1, 2, 3, 3, 5, 1, 1)),
    ("fused", (1, 2, 2, 3, 7, 1, 3)),
]
REGIMES = ("random", "ties", "subnormal")


def inputs(regime: str, dtype: str, config, seed: int = 0):
    """float64 features, masks (or logits) and grad_output, exact in ``dtype``."""
    n, c, h, w, k, g, s = config
    rng = np.random.default_rng(seed)
    p = SIGNIFICAND_BITS[dtype]
    shapes = (n, c, h, w), (n, g * k * k, h * s, w * s), (n, c, h * s, w * s)
    grad_output = rng.standard_normal(shapes[2])
    if regime == "random":
        return rng.standard_normal(shapes[0]), rng.random(shapes[1]), grad_output
    # one tap per output pixel, inside the image, weighs 3/4 or 3/2, so each
    # output is one product: an odd significand times 3 needs one more bit
    # than the dtype has, which makes an exact tie
    weights = np.zeros(shapes[1])
    index = np.indices((n, g, h * s, w * s))
    taps = [_inside_tap(rng, index[axis] // s, size, k) for axis, size in ((2, h), (3, w))]
    channel = index[1] * k * k + taps[0] * k + taps[1]
    weights[index[0], channel, index[2], index[3]] = rng.choice([0.75, 1.5], size=channel.shape)
    if regime == "ties":
        odd = 2 * rng.integers(2 ** (p - 2), 2 ** (p - 1), size=shapes[0]) + 1
        exponent = rng.integers(-3, 4, size=shapes[0]) - (p - 1)
        features = rng.choice([-1.0, 1.0], size=shapes[0]) * np.ldexp(odd, exponent)
        return features, weights, grad_output
    tiny = rng.integers(-(2 ** (p - 1)) + 1, 2 ** (p - 1), size=shapes[0])
    return tiny * SMALLEST_SUBNORMAL[dtype], weights, grad_output


def _inside_tap(rng, centre: np.ndarray, size: int, k: int) -> np.ndarray:
    """A random tap offset (0..k-1) per pixel whose input row / column is inside."""
    r = (k - 1) // 2
    low, high = np.maximum(0, centre - r), np.minimum(size - 1, centre + r)
    return low + (rng.random(centre.shape) * (high - low + 1)).astype(int) - centre + r


def run(variant, dtype, arrays, config):
    """(output, grad_features, grad_masks or grad_logits) of one variant in ``dtype``."""
    *_, k, g, s = config
    features, second, grad_output = (torch.from_numpy(a).to(dtype) for a in arrays)
    if variant == "fused":
        return harness.run_fused(grad_output, features, second, k, g, s)
    with _planner.forced_variant(variant):
        output = harness.run_forward(features, second, k, g, s)
        return (output, *harness.run_backward(grad_output, features, second, k, g, s))


def ties(values32: torch.Tensor, dtype: torch.dtype) -> int:
    """How many fp32 values lie exactly halfway between two ``dtype`` values."""
    exact = values32.double()
    rounded = values32.to(dtype).double()
    mirror = 2 * exact - rounded  # the other neighbour, for a tie
    return int(((mirror != rounded) & (mirror.to(dtype).double() == mirror)).sum())


def subnormals(values: torch.Tensor) -> int:
    finfo = torch.finfo(values.dtype)
    magnitude = values.double().abs()
    return int(((magnitude > 0) & (magnitude < finfo.smallest_normal)).sum())


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("variant, config", CASES, ids=[f"{v}-k{c[4]}s{c[6]}" for v, c in CASES])
def test_low_precision_equals_rounded_fp32(variant, config, dtype, regime):
    low = LOW_PRECISION[dtype]
    arrays = inputs(regime, dtype, config)
    if variant == "fused":  # logits instead of masks: any values, softmax makes weights
        n, c, h, w, k, g, s = config
        logits = np.random.default_rng(1).standard_normal((n, g * k * k * s * s, h, w))
        arrays = (arrays[0], 4 * logits, arrays[2])
    # the inputs as the low-precision kernel sees them, and exactly upcast
    arrays = tuple(torch.from_numpy(a).to(low).double().numpy() for a in arrays)
    with harness.simulator():
        got = run(variant, low, arrays, config)
        wide = run(variant, torch.float32, arrays, config)
    names = ("output", "grad_features", "grad_logits" if variant == "fused" else "grad_masks")
    for name, actual, reference in zip(names, got, wide):
        expected = reference.to(low)
        differ = actual.view(torch.int16) != expected.view(torch.int16)
        assert not differ.any(), (
            f"{name}: {int(differ.sum())} of {differ.numel()} differ from torch's rounding, "
            f"first {actual[differ][0].item()!r} vs {expected[differ][0].item()!r}"
        )
    if regime != "random" and variant != "fused":
        assert ties(wide[0], low) > 0, "no output is an exact tie: the inputs lost their purpose"
    if regime == "subnormal":
        assert subnormals(got[0]) > 0, "no subnormal output: the inputs lost their purpose"
