"""fp16 / bf16 results at the top of the range, and NaNs with payloads, through the public ops.

Overflow: each output (forward and grad_masks in one set of inputs,
grad_features in another) is a short sum the kernels form exactly in fp32,
chosen to land on the format's largest value, below and one fp32 ulp below the
midpoint to the next power of two (65520 for fp16: rounds down to the largest
value), on it (a tie, to even: infinity) and past it, with both signs.
Expected: torch's rounding of the exact float64 sum, bit for bit.

NaN payloads: mmcv's and torch's semantics are IEEE arithmetic over the taps
inside the image, so a NaN feature, mask or gradient that reaches a result
(even times a zero weight) makes it NaN, and one on a skipped outside tap does
not. Quiet and signalling NaNs of both signs and assorted payloads go in; the
results must be NaN exactly where the float64 reference is NaN, never Inf or a
number. Which NaN comes out is not specified (a GPU writes its canonical NaN),
so payloads out are not checked.

Every backend runs (the pure-PyTorch path, the kernels on the simulator), and on
the simulator every kernel variant.
"""

from __future__ import annotations

import numpy as np
import pytest

from backends import BACKENDS
from cases import assert_matches

torch = pytest.importorskip("torch")

import kernel_harness as harness  # noqa: E402

import carafe_cupy  # noqa: E402
from carafe_cupy._plan import planner as _planner  # noqa: E402

from gather_reference import gather_carafe, gather_carafe_backward  # noqa: E402

DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
LARGEST = {"float16": 65504.0, "bfloat16": float(torch.finfo(torch.bfloat16).max)}
# What is added to the largest value, as two parts exact in the format (their sums
# are exact in fp32): nothing; less than half a step (rounds back down); one fp32
# ulp below the midpoint to the next power of two (still rounds down); the midpoint
# (a tie, to even: Inf); one fp32 ulp past it; the next power of two; past it by
# more than half an fp16 step (the fp16 exponent would carry into a NaN pattern);
# the largest value again.
ADDED = {
    "float16": (
        (0.0, 0.0),
        (8.0, 7.0),
        (16.0 - 2.0**-7, 2.0**-7 - 2.0**-8),
        (16.0, 0.0),
        (16.0, 2.0**-8),
        (32.0, 0.0),
        (64.0, 1.0),
        (65504.0, 0.0),
    ),
    "bfloat16": (
        (0.0, 0.0),
        (2.0**118, 2.0**117),
        (2.0**119 - 2.0**111, 2.0**111 - 2.0**104),
        (2.0**119, 0.0),
        (2.0**119, 2.0**104),
        (2.0**120, 0.0),
    ),
}
CONFIG = (1, 3, 3, 4, 3, 1, 2)  # (N, C, H, W, k, G, s): even s and W for the pair kernels
RUNS = [
    (backend, variant)
    for backend in BACKENDS
    for variant in (
        ("auto", "general", "tiled", "tiled_pair") if backend.name != "cpu" else ("auto",)
    )
]
KERNEL_BACKENDS = [backend for backend in BACKENDS if backend.name != "cpu"]
RUN_IDS = [f"{backend.name}-{variant}" for backend, variant in RUNS]


def run_public(backend, variant, features, masks, grad_output, k, g, s):
    """carafe_cupy.carafe and its backward by autograd, on ``backend``."""
    device = backend.device
    f = features.to(device).clone().requires_grad_()
    m = masks.to(device).clone().requires_grad_()
    with backend.active(), _planner.forced_variant(variant):
        output = carafe_cupy.carafe(f, m, k, g, s)
        output.backward(grad_output.to(device))
    return output.detach().cpu(), f.grad.cpu(), m.grad.cpu()


def _inside(config) -> np.ndarray:
    """(k*k, Ho, Wo): whether each tap of each output pixel reads inside the input."""
    _, _, h, w, k, _, s = config
    r = (k - 1) // 2
    rows = np.arange(h * s) // s
    cols = np.arange(w * s) // s
    inside = np.zeros((k * k, h * s, w * s), dtype=bool)
    for i in range(k):
        for j in range(k):
            row_ok = (rows + i - r >= 0) & (rows + i - r < h)
            col_ok = (cols + j - r >= 0) & (cols + j - r < w)
            inside[i * k + j] = row_ok[:, None] & col_ok[None, :]
    return inside


def output_and_grad_masks_landing(dtype: str, seed: int = 0):
    """Inputs whose output and grad_masks are +-(largest + added), added from ADDED.

    Features are +1 (channel 0) and -1 (the others); each output pixel weighs the
    centre tap by the largest value and two other inside taps by the two parts
    of an added value, so output = +-(largest + added). grad_output is
    (+-largest, -+part, -+part') per pixel, so grad_masks = +-(largest + added')
    on every inside tap."""
    n, c, h, w, k, g, s = CONFIG
    rng = np.random.default_rng(seed)
    largest, added = LARGEST[dtype], np.array(ADDED[dtype])
    out_h, out_w = h * s, w * s
    features = np.ones((n, c, h, w))
    features[:, 1:] = -1.0
    masks = np.zeros((n, k * k, out_h, out_w))
    masks[0, k * k // 2] = largest
    inside = _inside(CONFIG)
    inside[k * k // 2] = False
    for y in range(out_h):
        for x in range(out_w):
            taps = rng.choice(np.flatnonzero(inside[:, y, x]), size=2, replace=False)
            masks[0, taps, y, x] = added[(y * out_w + x) % len(added)]
    sign = rng.choice([-1.0, 1.0], size=(out_h, out_w))
    parts = added[rng.permutation(out_h * out_w) % len(added)].reshape(out_h, out_w, 2)
    grad_output = np.stack([sign * largest, -sign * parts[..., 0], -sign * parts[..., 1]])[None]
    return features, masks, grad_output


def grad_features_landing(dtype: str, seed: int = 1):
    """Inputs whose grad_features is +-(largest + added): only the centre tap weighs
    (1), so an input pixel's gradient is the sum of its s*s sub-pixels' grad_output,
    which hold the largest value, the two parts of an added value and a zero."""
    n, c, h, w, k, g, s = CONFIG
    rng = np.random.default_rng(seed)
    largest, added = LARGEST[dtype], np.array(ADDED[dtype])
    masks = np.zeros((n, k * k, h * s, w * s))
    masks[0, k * k // 2] = 1.0
    grad_output = np.zeros((n, c, h * s, w * s))
    for channel in range(c):
        for y in range(h):
            for x in range(w):
                block = np.zeros(s * s)
                block[:3] = largest, *added[(channel * h * w + y * w + x) % len(added)]
                sign = rng.choice([-1.0, 1.0])
                grad_output[0, channel, y * s : y * s + s, x * s : x * s + s] = (
                    sign * rng.permutation(block).reshape(s, s)
                )
    features = rng.integers(-4, 5, size=(n, c, h, w)) / 4.0
    return features, masks, grad_output


def assert_rounded_exactly(actual: torch.Tensor, exact: np.ndarray, dtype: str, what: str) -> None:
    expected = torch.from_numpy(exact).to(DTYPES[dtype])
    differ = actual.view(torch.int16) != expected.view(torch.int16)
    assert not differ.any(), (
        f"{what}: {int(differ.sum())} differ, first: exact {exact[differ.numpy()][0]!r} gave "
        f"{actual[differ][0].item()!r}, want {expected[differ][0].item()!r}"
    )
    largest = LARGEST[dtype]
    rounded = expected.double().numpy()
    # the inputs do reach every case: rounded down to the largest value, a tie to Inf, beyond
    assert ((exact > largest) & (rounded == largest)).any(), f"{what}: none rounds to the largest"
    assert ((exact < -largest) & (rounded == -largest)).any(), f"{what}: none rounds to -largest"
    assert (rounded == np.inf).any() and (rounded == -np.inf).any(), f"{what}: no overflow"


@pytest.mark.parametrize("dtype", LARGEST)
@pytest.mark.parametrize("backend, variant", RUNS, ids=RUN_IDS)
def test_results_at_the_top_of_the_range_round_to_nearest_even(backend, variant, dtype):
    k, g, s = CONFIG[4:]
    low = DTYPES[dtype]
    features, masks, grad_output = output_and_grad_masks_landing(dtype)
    tensors = [torch.from_numpy(a).to(low) for a in (features, masks, grad_output)]
    assert all(
        (t.double().numpy() == a).all() for t, a in zip(tensors, (features, masks, grad_output))
    )
    output, _, grad_masks = run_public(backend, variant, *tensors, k, g, s)
    assert_rounded_exactly(output, gather_carafe(features, masks, k, g, s), dtype, "output")
    _, exact_grad_masks = gather_carafe_backward(grad_output, features, masks, k, g, s)
    assert_rounded_exactly(grad_masks, exact_grad_masks, dtype, "grad_masks")

    features, masks, grad_output = grad_features_landing(dtype)
    tensors = [torch.from_numpy(a).to(low) for a in (features, masks, grad_output)]
    _, grad_features, _ = run_public(backend, variant, *tensors, k, g, s)
    exact_grad_features, _ = gather_carafe_backward(grad_output, features, masks, k, g, s)
    assert_rounded_exactly(grad_features, exact_grad_features, dtype, "grad_features")


@pytest.mark.parametrize("dtype", LARGEST)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS, ids=lambda backend: backend.name)
def test_fused_output_of_the_largest_features_stays_the_largest(backend, dtype):
    """Features all at the largest value: an output whose taps all lie inside is
    largest * (sum of fp32 probabilities, 1 within rounding), which rounds to the
    largest value, not to Inf; no output anywhere overflows. (The pure-PyTorch
    path rounds the probabilities to the storage dtype first, as the unfused
    CARAFEPack does, so its sum may fall short: it is not held to this.)"""
    n, c, h, w, k, g, s = (1, 2, 4, 5, 3, 1, 2)
    low = DTYPES[dtype]
    generator = torch.Generator().manual_seed(3)
    features = torch.full((n, c, h, w), LARGEST[dtype], dtype=low)
    logits = (4 * torch.randn(n, g * k * k * s * s, h, w, generator=generator)).to(low)
    with backend.active():
        output = carafe_cupy.carafe_from_logits(
            features.to(backend.device), logits.to(backend.device), k, g, s
        ).cpu()
    assert torch.isfinite(output).all()
    interior = output[:, :, s : (h - 1) * s, s : (w - 1) * s]
    assert (interior.double() == LARGEST[dtype]).all(), interior.unique()


# NaN bit patterns: quiet and signalling, both signs, payload high or low.
NAN_BITS = {
    "float64": [0x7FF8000000000000, 0xFFF8000000000001, 0x7FF0000000000001, 0x7FF4242424242424],
    "float32": [0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FBFFFFF, 0xFFA42424],
    "float16": [0x7E00, 0xFE01, 0x7C01, 0x7DFF, 0xFD24],
    "bfloat16": [0x7FC0, 0xFFC1, 0x7F81, 0x7FBF, 0xFFA4],
}
INT_VIEW = {
    "float64": torch.int64,
    "float32": torch.int32,
    "float16": torch.int16,
    "bfloat16": torch.int16,
}


def with_nans(values: np.ndarray, dtype: str, rng, count: int = 3) -> torch.Tensor:
    """``values`` in ``dtype`` with NaN patterns written at ``count`` random places."""
    tensor = torch.from_numpy(values).to(DTYPES[dtype])
    flat = tensor.view(INT_VIEW[dtype]).view(-1)
    bits = np.array(NAN_BITS[dtype], dtype=np.uint64).astype(np.int64)
    if dtype != "float64":
        width = torch.finfo(DTYPES[dtype]).bits
        bits = np.where(bits >= 1 << (width - 1), bits - (1 << width), bits)
    for place in rng.choice(flat.numel(), size=count, replace=False):
        flat[int(place)] = int(rng.choice(bits))
    assert int(torch.isnan(tensor).sum()) == count
    return tensor


NAN_RUNS = [(b, v, d) for b, v in RUNS for d in DTYPES if (v, d) != ("tiled_pair", "float64")]


@pytest.mark.parametrize(
    "backend, variant, dtype", NAN_RUNS, ids=[f"{b.name}-{v}-{d}" for b, v, d in NAN_RUNS]
)
def test_nan_payloads_in_give_nan_out(backend, variant, dtype):
    n, c, h, w, k, g, s = (1, 4, 3, 4, 3, 2, 2)
    rng = np.random.default_rng(11)
    for trial in range(3):
        features = rng.integers(-8, 9, size=(n, c, h, w)) / 8.0
        masks = rng.integers(0, 9, size=(n, g * k * k, h * s, w * s)) / 8.0
        grad_output = rng.integers(-8, 9, size=(n, c, h * s, w * s)) / 8.0
        tensors = [with_nans(a, dtype, rng) for a in (features, masks, grad_output)]
        got = run_public(backend, variant, *tensors, k, g, s)
        f, m, go = (t.double().numpy() for t in tensors)
        want = (gather_carafe(f, m, k, g, s), *gather_carafe_backward(go, f, m, k, g, s))
        for name, actual, expected in zip(("output", "grad_features", "grad_masks"), got, want):
            assert np.isnan(expected).any() or name == "grad_features", f"{name}: no NaN reached"
            assert_matches(actual.double().numpy(), expected, dtype, f"trial {trial} {name}")


FUSED_NAN_RUNS = [(b, d) for b in BACKENDS for d in DTYPES]


@pytest.mark.parametrize(
    "backend, dtype", FUSED_NAN_RUNS, ids=[f"{b.name}-{d}" for b, d in FUSED_NAN_RUNS]
)
def test_nan_payloads_through_the_fused_softmax(backend, dtype):
    """A NaN logit makes its pixel's whole softmax NaN (torch's softmax does too)."""
    n, c, h, w, k, g, s = (1, 4, 3, 4, 3, 2, 2)
    rng = np.random.default_rng(12)
    for trial in range(3):
        features = rng.integers(-8, 9, size=(n, c, h, w)) / 8.0
        logits = rng.integers(-16, 17, size=(n, g * k * k * s * s, h, w)) / 4.0
        grad_output = rng.integers(-8, 9, size=(n, c, h * s, w * s)) / 8.0
        features, logits, grad_output = (
            with_nans(a, dtype, rng, count)
            for a, count in ((features, 1), (logits, 2), (grad_output, 1))
        )
        f = features.to(backend.device).clone().requires_grad_()
        lg = logits.to(backend.device).clone().requires_grad_()
        with backend.active():
            output = carafe_cupy.carafe_from_logits(f, lg, k, g, s)
            output.backward(grad_output.to(backend.device))
        got = (output.detach().cpu(), f.grad.cpu(), lg.grad.cpu())
        want = harness.fused_reference(grad_output, features, logits, k, g, s)
        for name, actual, expected in zip(("output", "grad_features", "grad_logits"), got, want):
            expected = np.asarray(expected)
            assert np.isnan(expected).any(), f"{name}: no NaN reached"
            assert_matches(actual.double().numpy(), expected, dtype, f"trial {trial} {name}")
