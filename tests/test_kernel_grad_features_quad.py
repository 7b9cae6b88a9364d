"""grad_features with four input pixels per thread (s = 2, k <= 5, fp32, fp16, bf16):
against the float64 reference with canaries around every tensor, fp16 and bf16 equal
to the rounding of the fp32 kernel, bit for bit the same in every simulator thread
order (the warp-shuffle reduction has one order) and as the one-pixel kernel (the
planner picks either per shape and dtype), and wrong with weakened barriers."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import kernel_harness as harness  # noqa: E402

from carafe_cupy._plan import planner as _planner  # noqa: E402
from carafe_cupy._plan import record as _launch_record  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)

ORDERS = ("forward", "reverse", "random", "warp-serial", "random-warp")
# (N, C, H, W, k, G): ragged quads (W not a multiple of 4), tiles past the first in x
# and y, partial tiles, groups, partial channel batches, several channel slices.
CASES = [
    (1, 3, 5, 7, 5, 1),
    (2, 6, 9, 37, 5, 2),
    (1, 9, 4, 33, 3, 1),
    (1, 34, 3, 6, 3, 1),
]
LOW_PRECISION = (torch.float16, torch.bfloat16)


def inputs(case, dtype=torch.float32, seed=0):
    """(grad_output, features, masks) of ``case`` at s = 2, inexact sums."""
    n, c, h, w, k, g = case
    generator = torch.Generator().manual_seed(seed)
    grad_output = torch.randn(n, c, 2 * h, 2 * w, generator=generator)
    features = torch.randn(n, c, h, w, generator=generator)
    masks = torch.rand(n, g * k * k, 2 * h, 2 * w, generator=generator)
    return tuple(t.to(dtype) for t in (grad_output, features, masks))


def quad_grad_features(case, dtype=torch.float32, order=None, variant="tiled_pair"):
    """grad_features by the kernels (canaries checked) and the kernels launched;
    the four-pixel kernel unless ``variant`` is "tiled" (one pixel a thread)."""
    grad_output, features, masks = inputs(case, dtype)
    *_, k, g = case
    with harness.simulator(order), _launch_record.recording() as records:
        with _planner.forced_variant(variant):
            grad_features, _ = harness.run_backward(grad_output, features, masks, k, g, 2)
    return grad_features, [record.kernel for record in records]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_the_reference_and_takes_four_pixels(case):
    grad_features, kernels = quad_grad_features(case)
    assert any("backward_features_tiled" in name and "_p4_" in name for name in kernels)
    grad_output, features, masks = inputs(case)
    *_, k, g = case
    _, want, _ = harness.reference(grad_output, features, masks, k, g, 2)
    np.testing.assert_allclose(grad_features.double().numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("case", CASES[:2], ids=str)
def test_low_precision_equals_the_rounded_fp32_kernel(case, dtype):
    got, kernels = quad_grad_features(case, dtype)
    assert any("_p4_" in name for name in kernels)
    # the fp32 kernel on the same (exactly representable) values, rounded once
    grad_output, features, masks = (t.float() for t in inputs(case, dtype))
    *_, k, g = case
    with harness.simulator(), _planner.forced_variant("tiled_pair"):
        wide, _ = harness.run_backward(grad_output, features, masks, k, g, 2)
    bits = harness.BITS[dtype]
    assert torch.equal(got.view(bits), wide.to(dtype).view(bits))


@pytest.mark.parametrize("case", CASES[1:3], ids=str)
def test_every_thread_order_gives_the_same_bits(case):
    results = [quad_grad_features(case, order=order)[0] for order in ORDERS]
    assert all(torch.equal(results[0].view(torch.int32), r.view(torch.int32)) for r in results)


def test_the_general_kernel_agrees_within_rounding():
    case = CASES[1]
    four, _ = quad_grad_features(case)
    general, kernels = quad_grad_features(case, variant="general")
    assert not any("_tiled" in name for name in kernels)
    torch.testing.assert_close(four, general, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_one_pixel_and_four_pixel_kernels_give_the_same_bits(case):
    # Both add a pixel's sub-pixel sums as (p00 + p01) + (p10 + p11), taps in one
    # order, so the planner may pick either per shape and per dtype.
    four, kernels = quad_grad_features(case)
    one, one_kernels = quad_grad_features(case, variant="tiled")
    assert any("_p4_" in name for name in kernels)
    assert any("features_tiled" in n and "_p4_" not in n for n in one_kernels)
    assert torch.equal(four.view(torch.int32), one.view(torch.int32))


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision_one_pixel_equals_the_rounded_fp32_four_pixel_kernel(dtype):
    # fp16 may take the one-pixel kernel where fp32 takes the four-pixel one
    case = CASES[1]
    got, kernels = quad_grad_features(case, dtype, variant="tiled")
    assert not any("_p4_" in name for name in kernels)
    grad_output, features, masks = (t.float() for t in inputs(case, dtype))
    *_, k, g = case
    with harness.simulator(), _planner.forced_variant("tiled_pair"):
        wide, _ = harness.run_backward(grad_output, features, masks, k, g, 2)
    bits = harness.BITS[dtype]
    assert torch.equal(got.view(bits), wide.to(dtype).view(bits))


@pytest.mark.parametrize("weak_barriers, order", [(1, "random-warp"), (2, "forward")])
def test_weakened_barriers_give_wrong_answers(weak_barriers, order, monkeypatch):
    """Barriers that do not hold the whole block (built with
    -DCARAFE_SIM_WEAK_BARRIERS; the kernel source untouched) give wrong answers."""
    monkeypatch.setenv("CARAFE_CUPY_SIM_CXXFLAGS", f"-DCARAFE_SIM_WEAK_BARRIERS={weak_barriers}")
    case = (1, 8, 5, 9, 3, 1)
    grad_output, features, masks = inputs(case)
    *_, k, g = case
    with harness.simulator(order), _launch_record.recording() as records:
        with _planner.forced_variant("tiled_pair"):
            got = harness.run_backward(grad_output, features, masks, k, g, 2, pad=2)[0]
    assert any("_p4_" in record.kernel for record in records)
    _, want, _ = harness.reference(grad_output, features, masks, k, g, 2)
    assert not np.allclose(got.double().numpy(), want, rtol=1e-4, atol=1e-4, equal_nan=False)


@pytest.mark.parametrize("variant, pixels", [("tiled_pair", "_p4_"), ("tiled", "_k3_float32")])
def test_a_pixels_partial_sums_are_added_in_the_documented_order(variant, pixels):
    # Only the centre tap is non-zero, so sub-pixel (a, b) of a pixel contributes
    # exactly its grad_output value v(a, b). With v = 2^24, 1, 1, -2^24 in fp32,
    # (v00 + v01) + (v10 + v11) = 2^24 + (1 - 2^24) = 1, where pairing v00 with v11
    # gives 2 and a running sum ((v00 + v01) + v10) + v11 gives 0: both kernels'
    # association is pinned, not just a total.
    n, c, h, w, k, g = 1, 2, 3, 6, 3, 1
    values = torch.tensor([[2.0**24, 1.0], [1.0, -(2.0**24)]])
    grad_output = values.repeat(h, w).expand(n, c, 2 * h, 2 * w).contiguous()
    features = torch.zeros(n, c, h, w)
    masks = torch.zeros(n, g * k * k, 2 * h, 2 * w)
    masks[:, (k * k) // 2] = 1.0
    with harness.simulator(), _launch_record.recording() as records:
        with _planner.forced_variant(variant):
            grad_features, _ = harness.run_backward(grad_output, features, masks, k, g, 2)
    assert any("features_tiled" in r.kernel and pixels in r.kernel for r in records)
    assert torch.equal(grad_features, torch.ones(n, c, h, w))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("tile", [(16, 4), (16, 3)], ids=str)
def test_each_one_pixel_tile_gives_the_four_pixel_bits_in_every_order(tile, order, monkeypatch):
    # the planner's one-pixel tile shapes at s = 2, each forced in turn: ragged
    # tiles in x and y, several channel batches, two groups
    from carafe_cupy._plan import features_tiles as _features_tiles

    case = (2, 6, 13, 37, 5, 2)
    four, _ = quad_grad_features(case)
    monkeypatch.setattr(_features_tiles, "FEATURES_TILES_S2", (tile,))
    _planner._backward.cache_clear()
    try:
        grad_output, features, masks = inputs(case)
        with harness.simulator(order), _launch_record.recording() as records:
            with _planner.forced_variant("tiled"):
                one, _ = harness.run_backward(grad_output, features, masks, 5, 2, 2)
        (record,) = [r for r in records if r.operation == "grad_features"]
        assert record.pixels == 1 and record.tiles_y == -(-13 // tile[1])
    finally:
        monkeypatch.undo()
        _planner._backward.cache_clear()
    assert torch.equal(four.view(torch.int32), one.view(torch.int32))
