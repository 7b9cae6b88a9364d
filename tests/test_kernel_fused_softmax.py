"""The fused kernels' softmax with logits spread far apart within one pixel.

carafe_from_logits (and CARAFEPack) run kernels that apply pixel_shuffle and a
softmax over each group's k*k taps themselves. Here the logits of one pixel span
more than 100 (fp64: 800), with one to three taps near the pixel's maximum and
the rest far below: exp of a raw logit overflows (or underflows to zero) and
so does exp(logit - m) for any m but the pixel's own maximum, so the softmax
survives only if it subtracts exactly that. The maximum sits on every tap
position in turn (first, last, middle), and maxima differ by hundreds between
pixels, sub-pixels and groups. Forward and both gradients, in every dtype and
kernel size with fused kernels, one and two pixels per thread, against a
float64 reference.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from backends import BACKENDS
from cases import assert_close

torch = pytest.importorskip("torch")

import kernel_harness as harness  # noqa: E402

import carafe_cupy  # noqa: E402
from carafe_cupy._kernels import sources as _sources  # noqa: E402
from carafe_cupy._plan import planner as _planner  # noqa: E402
from carafe_cupy._plan import record as _launch_record  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)

DTYPES = {name: getattr(torch, name) for name in _sources.SUPPORTED_DTYPES}
# per dtype: how far pixel maxima range, and how far the far taps lie below the maximum
# (exp overflows past 88.7 in fp32, 709.8 in fp64)
OFFSET = {"float64": 1500.0}
FAR = {"float64": (800.0, 1000.0)}


def spread_logits(config, dtype: str, seed: int = 0) -> np.ndarray:
    """Logits (N, G*k*k*s*s, H, W) whose pixels each span more than FAR[0]."""
    n, c, h, w, k, g, s = config
    rng = np.random.default_rng(seed)
    taps = k * k
    offset, (near_far, far_far) = OFFSET.get(dtype, 300.0), FAR.get(dtype, (100.0, 250.0))
    pixels = n * g * h * s * w * s
    # softmax-layout (pixel, tap) values: the maximum at tap (pixel % taps)
    top = np.arange(pixels) % taps
    base = rng.uniform(-offset, offset, size=pixels)
    values = base[:, None] - rng.uniform(near_far, far_far, size=(pixels, taps))
    values[np.arange(pixels), top] = base
    for pixel in range(pixels):  # up to two more taps near the maximum, in some pixels
        others = np.delete(np.arange(taps), top[pixel])
        near = rng.choice(others, size=pixel % 3, replace=False)
        values[pixel, near] = base[pixel] - rng.uniform(0.5, 4.0, size=near.size)
    # (n, g, Y, X, tap) -> masks layout (n, g*taps, Y, X) -> logits by pixel_unshuffle
    masks = values.reshape(n, g, h * s, w * s, taps).transpose(0, 1, 4, 2, 3)
    masks = torch.from_numpy(np.ascontiguousarray(masks).reshape(n, g * taps, h * s, w * s))
    return torch.nn.functional.pixel_unshuffle(masks, s).numpy()


def check_hostile(logits: torch.Tensor, config, dtype: str) -> None:
    """The logits as the kernel sees them: every pixel spans more than the
    overflow limit of exp in the accumulator, and the maximum is on every tap."""
    n, c, h, w, k, g, s = config
    masks = torch.nn.functional.pixel_shuffle(logits.double(), s)
    per_pixel = masks.view(n, g, k * k, h * s, w * s)
    spread = per_pixel.amax(dim=2) - per_pixel.amin(dim=2)
    limit = 709.8 if dtype == "float64" else 88.8
    assert (spread > limit).all(), float(spread.min())
    assert set(per_pixel.argmax(dim=2).unique().tolist()) == set(range(k * k))


def cases():
    out = []
    for dtype in DTYPES:
        for k in _sources.TILED_KERNEL_SIZES:
            if not _sources.fused_instantiated(dtype, k):
                continue
            out.append((dtype, k, 2, "tiled"))
            out.append((dtype, k, 3, "tiled"))
            if _sources.pairs_instantiated(dtype, k):
                out.append((dtype, k, 2, "pair"))
    return out


CASES = cases()


@pytest.mark.parametrize(
    "dtype, k, s, pixels", CASES, ids=[f"{d}-k{k}-s{s}-{p}" for d, k, s, p in CASES]
)
def test_fused_kernels_subtract_each_pixels_own_maximum(dtype, k, s, pixels):
    config = (1, 4, 3, 4, k, 2, s)
    n, c, h, w, _, g, _ = config
    low = DTYPES[dtype]
    generator = torch.Generator().manual_seed(k * 10 + s)
    features = torch.randn(n, c, h, w, generator=generator).to(low)
    grad_output = torch.randn(n, c, h * s, w * s, generator=generator).to(low)
    logits = torch.from_numpy(spread_logits(config, dtype, seed=k + s)).to(low)
    check_hostile(logits, config, dtype)
    # "tiled" makes the fused forward take one pixel per thread; "auto" takes 2 x 2
    with harness.simulator(), _launch_record.recording() as records:
        with _planner.forced_variant("tiled" if pixels == "tiled" else "auto"):
            got = harness.run_fused(grad_output, features, logits, k, g, s)
    forward = {r.kernel for r in records if r.operation == "fused_forward"}
    assert len(forward) == 1 and (("_p4_" in forward.pop()) == (pixels == "pair"))
    want = harness.fused_reference(grad_output, features, logits, k, g, s)
    for name, actual, expected in zip(("output", "grad_features", "grad_logits"), got, want):
        assert torch.isfinite(actual).all(), f"{name}: not finite"
        assert_close(actual.double().numpy(), np.asarray(expected), dtype, name)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("backend", BACKENDS, ids=lambda backend: backend.name)
def test_carafe_from_logits_with_spread_logits(backend, dtype):
    """The public op, forward and backward by autograd, on every backend."""
    config = (2, 2, 3, 5, 5, 1, 2)
    n, c, h, w, k, g, s = config
    low = DTYPES[dtype]
    generator = torch.Generator().manual_seed(7)
    features = torch.randn(n, c, h, w, generator=generator).to(low)
    grad_output = torch.randn(n, c, h * s, w * s, generator=generator).to(low)
    logits = torch.from_numpy(spread_logits(config, dtype, seed=3)).to(low)
    check_hostile(logits, config, dtype)
    f = features.clone().to(backend.device).requires_grad_()
    lg = logits.clone().to(backend.device).requires_grad_()
    with backend.active():
        output = carafe_cupy.carafe_from_logits(f, lg, k, g, s)
        output.backward(grad_output.to(backend.device))
    got = (output.detach().cpu(), f.grad.cpu(), lg.grad.cpu())
    want = harness.fused_reference(grad_output, features, logits, k, g, s)
    for name, actual, expected in zip(("output", "grad_features", "grad_logits"), got, want):
        assert torch.isfinite(actual).all(), f"{name}: not finite"
        assert_close(actual.double().numpy(), np.asarray(expected), dtype, name)
