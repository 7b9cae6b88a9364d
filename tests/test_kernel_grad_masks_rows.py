"""grad_masks with 2 x 2 output pixels per thread in its two forms: every kernel
row a block, and one kernel row a block (``_r1``, for grids the whole-kernel
blocks leave short). Both against the float64 reference with canaries around
every tensor, bit for bit equal to each other and to the one-pixel kernel (one
summation order: ascending channels per subset, the subsets in ascending
order), fp16 and bf16 equal to the rounding of the fp32 kernel, the same bits in
every simulator thread order, zero (not NaN) where a tap lies outside the image
and the features hold Inf or NaN, and wrong with weakened barriers."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import kernel_harness as harness  # noqa: E402
from sparse_memory import SparseArena  # noqa: E402

from carafe_cupy._plan import planner as _planner  # noqa: E402
from carafe_cupy._plan import record as _launch_record  # noqa: E402
from carafe_cupy._plan import tiles as _tiles  # noqa: E402
from carafe_cupy._runtime import launch as _launch  # noqa: E402
from carafe_cupy._torch import common as _torch_common  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)

ORDERS = ("forward", "reverse", "random", "warp-serial", "random-warp")
# (N, C, H, W, k, G, s): a channel past the last subset's end (5 channels, one a
# subset: three subsets empty) over one tile; 2 groups of 19 channels (subsets of
# 3, the last short: masked batches only) over tiles past the first in x and y;
# k = 3 at s = 4 (the halo's rows not the output's; the whole-kernel form only,
# the one-row form being built for k = 5); one image row and s = 6;
# subsets of 8 channels: 59 (the last of 3: the one-row form's unmasked batch of
# two, then masked ones, the first half inside), 62 (the last of 6: the whole
# kernel's unmasked batch of four, then a half-inside one) and 32 (4 each:
# unmasked batches only; k = 5, where the whole kernel stages four a batch).
CASES = [
    (1, 5, 5, 7, 5, 1, 2),
    (2, 38, 4, 37, 5, 2, 2),
    (1, 9, 4, 20, 3, 1, 4),
    (1, 16, 1, 5, 5, 1, 6),
    (1, 59, 3, 10, 5, 1, 2),
    (1, 62, 2, 9, 5, 1, 2),
    (1, 32, 3, 4, 5, 1, 2),
]
LOW_PRECISION = (torch.float16, torch.bfloat16)
FORMS = {"whole": False, "one row": True}


def forms(case) -> list[str]:
    """The forms built for the case's k (one kernel row a block: k = 5)."""
    return [form for form, one_row in FORMS.items() if not one_row or case[4] == 5]


def inputs(case, dtype=torch.float32, seed=0):
    """(grad_output, features, masks) of ``case``, inexact sums."""
    n, c, h, w, k, g, s = case
    generator = torch.Generator().manual_seed(seed)
    grad_output = torch.randn(n, c, s * h, s * w, generator=generator)
    features = torch.randn(n, c, h, w, generator=generator)
    masks = torch.randn(n, g * k * k, s * h, s * w, generator=generator)
    return grad_output.to(dtype), features.to(dtype), masks.to(dtype)


def grad_masks(case, tensors, form=None, order=None, variant="auto", monkeypatch=None):
    """grad_masks by the kernels (canaries checked) and the kernels launched;
    ``form`` forces the 2 x 2 kernel's form where the planner picks it."""
    *_, k, g, s = case
    grad_output, features, masks = tensors
    if form is not None:
        monkeypatch.setattr(_tiles, "masks_one_row_faster", lambda *a, **kw: FORMS[form])
    _planner._backward.cache_clear()
    try:
        with _planner.forced_variant(variant), harness.simulator(order):
            with _launch_record.recording() as records:
                _, result = harness.run_backward(grad_output, features, masks, k, g, s)
    finally:
        _planner._backward.cache_clear()
    return result, [record.kernel for record in records if "masks" in record.kernel]


def quad(case, monkeypatch, form, dtype=torch.float32, order=None, tensors=None):
    tensors = tensors if tensors is not None else inputs(case, dtype)
    result, kernels = grad_masks(case, tensors, form, order, monkeypatch=monkeypatch)
    suffix = "_p4_r1_" if FORMS[form] else "_p4_"
    assert kernels and all(suffix in name for name in kernels), kernels
    return result


@pytest.mark.parametrize("case", CASES, ids=str)
def test_both_forms_match_the_reference_and_the_one_pixel_kernel_bit_for_bit(case, monkeypatch):
    tensors = inputs(case)
    *_, k, g, s = case
    _, _, want = harness.reference(*tensors, k, g, s)
    single, kernels = grad_masks(case, tensors, variant="tiled")
    assert kernels and all("_p1_" in name for name in kernels)
    for form in forms(case):
        got = quad(case, monkeypatch, form, tensors=tensors)
        np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4,
                                   atol=1e-4)
        assert torch.equal(got.view(torch.int32), single.view(torch.int32)), form


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("case", CASES[:2], ids=str)
def test_low_precision_equals_the_rounded_fp32_kernel(case, dtype, form, monkeypatch):
    got = quad(case, monkeypatch, form, dtype)
    # the fp32 kernel, in the other form, on the same (exactly representable) values
    other = next(name for name in FORMS if name != form)
    wide = quad(case, monkeypatch, other, tensors=[t.float() for t in inputs(case, dtype)])
    bits = harness.BITS[dtype]
    assert torch.equal(got.view(bits), wide.to(dtype).view(bits))


@pytest.mark.parametrize("case", [CASES[1], CASES[4]], ids=str)
def test_every_thread_order_gives_the_same_bits(case, monkeypatch):
    results = [quad(case, monkeypatch, "one row", order=order) for order in ORDERS]
    results.append(quad(case, monkeypatch, "whole", order="random-warp"))
    assert all(torch.equal(results[0].view(torch.int32), r.view(torch.int32)) for r in results)


@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=str)
@pytest.mark.parametrize("form", FORMS)
def test_a_tap_outside_the_image_has_zero_gradient(form, value, monkeypatch):
    # non-finite features on the image's border rows and columns: the taps that
    # fall outside the image still get exactly 0 (their halo is clamped onto the
    # border), those inside get the reference's non-finite sums
    case = (1, 6, 5, 9, 5, 1, 2)
    grad_output, features, masks = inputs(case)
    features[:, :, 0, :] = value
    features[:, :, :, -1] = value
    got = quad(case, monkeypatch, form, tensors=(grad_output, features, masks))
    _, _, want = harness.reference(grad_output, features, masks, 5, 1, 2)
    np.testing.assert_array_equal(np.isnan(got.numpy()), np.isnan(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got.numpy()[finite], want[finite], rtol=1e-4, atol=1e-4)
    assert (got.numpy()[finite] == 0).any()


@pytest.mark.parametrize("infinite", ["grad_output", "features"])
@pytest.mark.parametrize("form", FORMS)
def test_a_channel_past_a_short_subset_adds_nothing(form, infinite, monkeypatch):
    # 59 channels, subsets of 8: the last holds 3 (56-58), and the channels past
    # its end re-read channel 56. With +Inf there (in grad_output or in the
    # features, the other tensor positive) every inside tap's sum is +Inf, not
    # the NaN an unmasked re-read (Inf * 0) would add.
    case = (1, 59, 3, 10, 5, 1, 2)
    grad_output, features, masks = inputs(case)
    grad_output, features = grad_output.abs() + 0.5, features.abs() + 0.5
    (grad_output if infinite == "grad_output" else features)[:, 56] = float("inf")
    got = quad(case, monkeypatch, form, tensors=(grad_output, features, masks))
    _, _, want = harness.reference(grad_output, features, masks, 5, 1, 2)
    assert np.isinf(want).any() and not np.isnan(want).any()
    np.testing.assert_array_equal(np.isinf(got.numpy()), np.isinf(want))
    assert not np.isnan(got.numpy()).any()


@pytest.mark.parametrize("weak_barriers, order", [(1, "random-warp"), (2, "forward")])
def test_weakened_barriers_give_wrong_answers(weak_barriers, order, monkeypatch):
    """Barriers that do not hold the whole block (built with
    -DCARAFE_SIM_WEAK_BARRIERS; the kernel source untouched) give wrong answers."""
    monkeypatch.setenv("CARAFE_CUPY_SIM_CXXFLAGS", f"-DCARAFE_SIM_WEAK_BARRIERS={weak_barriers}")
    case = (1, 24, 3, 9, 5, 1, 2)
    tensors = inputs(case)
    got = quad(case, monkeypatch, "one row", order=order, tensors=tensors)
    _, _, want = harness.reference(*tensors, 5, 1, 2)
    assert not np.allclose(got.double().numpy(), want, rtol=1e-4, atol=1e-4)


def test_the_planner_takes_one_row_blocks_only_where_the_grid_is_short():
    def kernel(h, w):
        geometry = _planner.Geometry(2, 256, h, w, 5, 1, 2)
        ref = harness.framed_ref((2, 256, 2 * h, 2 * w), "float32")
        feats = harness.framed_ref((2, 256, h, w), "float32")
        masks = harness.framed_ref((2, 25, 2 * h, 2 * w), "float32")
        (plan,) = _planner.plan_backward(geometry, ref, feats, masks, None, masks)
        return plan.kernel

    assert kernel(13, 21).endswith("_p4_r1_float32")
    assert kernel(104, 168).endswith("_p4_float32")
    assert kernel(26, 42).endswith("_p4_float32")


@pytest.mark.parametrize("form", FORMS)
def test_a_channel_step_past_2_to_the_31_bytes(form, monkeypatch, tmp_path):
    # features and grad_output whose channel stride passes 2**31 bytes (2**29 + 2**10
    # elements of 4 bytes): each warp's second channel is a 64-bit step away; bit
    # for bit the result on compact copies
    case = (1, 16, 3, 4, 5, 1, 2)
    grad_output, features, masks = inputs(case)
    want = quad(case, monkeypatch, form, tensors=(grad_output, features, masks))
    n, c, h, w = features.shape
    geometry = _launch.Geometry(n, c, h, w, 5, 1, 2)
    got = torch.full_like(masks, float("nan"))
    arena = SparseArena(tmp_path)
    try:
        step = 2**29 + 2**10
        far_features = arena.tensor(features, features.shape, (c * step, step, w + 2, 1),
                                    features.dtype)
        far_grad = arena.tensor(grad_output, grad_output.shape, (c * step, step, 2 * w + 2, 1),
                                grad_output.dtype)
        refs = [_torch_common.tensor_ref(t) for t in (far_grad, far_features, masks)]
        _planner._backward.cache_clear()
        with harness.simulator(), _launch_record.recording() as records:
            _launch.launch_backward(geometry, *refs, None, _torch_common.tensor_ref(got))
        _planner._backward.cache_clear()
        del far_features, far_grad, refs
    finally:
        arena.close()
    suffix = "_p4_r1_" if FORMS[form] else "_p4_"
    assert [r.kernel for r in records] == [f"carafe_backward_masks_tiled_k5{suffix}float32"]
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
