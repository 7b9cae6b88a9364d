"""Extreme values and tile edges on the simulator, every tensor framed by canaries.

* The fused normaliser with logits shifted by +-100 and +-1e4: exp overflows
  (or underflows to zero) unless the softmax subtracts the maximum first.
* NaN / +Inf / -Inf in every input, through every variant and dtype: the same
  positions as the float64 reference, finite values within tolerance.
* Pair tiles across more than one 64-wide tile (W * s > 64), in both thread
  orders, and the tile edges of the one-pixel variant.
* The general kernels' grid-stride loop, with the grid capped at one block.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cases import assert_close, assert_matches, make_exact_inputs

torch = pytest.importorskip("torch")

import kernel_harness as harness  # noqa: E402

from carafe_cupy._kernels import sources as _sources  # noqa: E402
from carafe_cupy._plan import planner as _planner  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)

DTYPES = {name: getattr(torch, name) for name in _sources.SUPPORTED_DTYPES}
FUSED = [
    (dtype, k)
    for dtype in DTYPES
    for k in _sources.TILED_KERNEL_SIZES
    if _sources.fused_instantiated(dtype, k)
]
SHIFTS = (100.0, -100.0, 1e4, -1e4)


def fused_inputs(config, dtype, logit_shift=0.0, seed=0):
    n, c, h, w, k, g, s = config
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, c, h, w, generator=generator)
    logits = 3 * torch.randn(n, g * k * k * s * s, h, w, generator=generator) + logit_shift
    grad_output = torch.randn(n, c, h * s, w * s, generator=generator)
    return tuple(t.to(DTYPES[dtype]) for t in (grad_output, features, logits))


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("dtype, k", FUSED, ids=[f"{d}-k{k}" for d, k in FUSED])
def test_fused_softmax_survives_shifted_logits(dtype, k, shift):
    config = (1, 2, 3, 4, k, 2, 2)
    *_, g, s = config
    grad_output, features, logits = fused_inputs(config, dtype, shift)
    with harness.simulator():
        got = harness.run_fused(grad_output, features, logits, k, g, s)
    want = harness.fused_reference(grad_output, features, logits, k, g, s)
    for name, actual, expected in zip(("output", "grad_features", "grad_logits"), got, want):
        assert torch.isfinite(actual).all(), f"{name}: not finite with logits shifted by {shift}"
        assert_close(actual.double().numpy(), np.asarray(expected), dtype, name)


def with_specials(array: np.ndarray, rng, count: int) -> np.ndarray:
    array = array.copy()
    flat = array.reshape(-1)
    flat[rng.integers(0, flat.size, size=count)] = rng.choice([np.nan, np.inf, -np.inf], count)
    return array


def _built(variant: str, dtype: str, k: int) -> bool:
    if variant == "tiled_pair":
        return _sources.pairs_instantiated(dtype, k)
    return variant != "fused" or _sources.fused_instantiated(dtype, k)


SPECIAL_CASES = [
    (variant, config, dtype)
    for variant, config in harness.VARIANT_CASES
    for dtype in DTYPES
    if _built(variant, dtype, config[4])
]


@pytest.mark.parametrize(
    "variant, config, dtype",
    SPECIAL_CASES,
    ids=[f"{v}-k{c[4]}s{c[6]}-{d}" for v, c, d in SPECIAL_CASES],
)
def test_nan_and_inf_propagate_through_every_variant(variant, config, dtype):
    n, c, h, w, k, g, s = config
    rng = np.random.default_rng(5)
    for trial in range(3):
        if variant == "fused":
            tensors = [t.double().numpy() for t in fused_inputs(config, dtype, seed=trial)]
        else:
            features, masks, grad_output = make_exact_inputs(config, seed=trial)
            tensors = [grad_output, features, masks]
        tensors = [with_specials(t, rng, 2) for t in tensors]
        grad_output, features, second = (torch.from_numpy(t).to(DTYPES[dtype]) for t in tensors)
        with harness.simulator():
            if variant == "fused":
                got = harness.run_fused(grad_output, features, second, k, g, s)
            else:
                with _planner.forced_variant(variant):
                    output = harness.run_forward(features, second, k, g, s)
                    got = (output, *harness.run_backward(grad_output, features, second, k, g, s))
        reference = harness.fused_reference if variant == "fused" else harness.reference
        with np.errstate(invalid="ignore", over="ignore"):
            want = reference(grad_output, features, second, k, g, s)
        for name, actual, expected in zip(("output", "grad_features", "grad_2"), got, want):
            assert_matches(actual.double().numpy(), np.asarray(expected), dtype, name)


# (N, C, H, W, k, G, s): output widths 80, 66 and 68 span two 64-wide pair tiles.
PAIR_TILE_CONFIGS = [(1, 3, 3, 40, 3, 1, 2), (1, 4, 2, 33, 5, 2, 2), (1, 2, 2, 17, 3, 1, 4)]
# one-pixel tiles: partial tiles in x and y, H and W below k, a 7-wide kernel
EDGE_CONFIGS = [(1, 3, 9, 35, 3, 1, 1), (1, 2, 2, 2, 7, 2, 3), (2, 5, 5, 13, 7, 1, 2)]


@pytest.mark.parametrize("order", ("forward", "reverse"))
@pytest.mark.parametrize(
    "variant, config",
    [("tiled_pair", c) for c in PAIR_TILE_CONFIGS] + [("tiled", c) for c in EDGE_CONFIGS],
    ids=lambda value: value if isinstance(value, str) else "N{}C{}_{}x{}_k{}G{}s{}".format(*value),
)
def test_tiles_and_edges_write_only_their_outputs(variant, config, order):
    *_, k, g, s = config
    features, masks, grad_output = (torch.from_numpy(a).float() for a in make_exact_inputs(config))
    with harness.simulator(order), _planner.forced_variant(variant):
        got = (
            harness.run_forward(features, masks, k, g, s),
            *harness.run_backward(grad_output, features, masks, k, g, s),
        )
    want = harness.reference(grad_output, features, masks, k, g, s)
    for name, actual, expected in zip(("output", "grad_features", "grad_masks"), got, want):
        assert_close(actual.double().numpy(), expected, "float32", f"{variant} {name}")


def test_general_kernels_loop_over_a_capped_grid(monkeypatch):
    """With the grid capped at one block, each thread loops over many elements."""
    monkeypatch.setattr(_planner, "MAX_BLOCKS", 1)
    monkeypatch.setattr(_planner, "_forward", _planner._forward.__wrapped__)  # plans uncached
    monkeypatch.setattr(_planner, "_backward", _planner._backward.__wrapped__)
    config = (1, 4, 9, 8, 3, 2, 2)  # 288 inputs, 1152 outputs: more than 256 threads each
    *_, k, g, s = config
    features, masks, grad_output = (torch.from_numpy(a).float() for a in make_exact_inputs(config))
    with harness.simulator(), _planner.forced_variant("general"):
        got = (
            harness.run_forward(features, masks, k, g, s),
            *harness.run_backward(grad_output, features, masks, k, g, s),
        )
    want = harness.reference(grad_output, features, masks, k, g, s)
    for name, actual, expected in zip(("output", "grad_features", "grad_masks"), got, want):
        assert_close(actual.double().numpy(), expected, "float32", name)
