"""The forward with 2 x 2 output pixels per thread (even s, k <= 5, fp32, fp16, bf16):
against the float64 reference with canaries around every tensor, bit for bit equal
to the one-pixel kernel (one summation order), fp16 and bf16 equal to the rounding
of the fp32 kernel, the same bits in every simulator thread order, finite where an
outside tap's mask is not, a whole batch's channel step past 2**31 elements, and
wrong with weakened barriers."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import kernel_harness as harness  # noqa: E402
from sparse_memory import SparseArena  # noqa: E402

from carafe_cupy._plan import planner as _planner  # noqa: E402
from carafe_cupy._plan import record as _launch_record  # noqa: E402
from carafe_cupy._runtime import launch as _launch  # noqa: E402
from carafe_cupy._torch import common as _torch_common  # noqa: E402

from gather_reference import gather_carafe  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)

ORDERS = ("forward", "reverse", "random", "warp-serial", "random-warp")
# (N, C, H, W, k, G, s): a partial batch after a whole one; only a partial batch
# (3 channels a group) over tiles past the first in x and y; s = 4 and 6 (halos
# shorter than the planes); several channel slices, the last with a partial batch.
CASES = [
    (1, 5, 5, 7, 5, 1, 2),
    (2, 6, 9, 37, 5, 2, 2),
    (1, 9, 4, 33, 3, 1, 4),
    (1, 7, 6, 5, 5, 1, 6),
    (1, 38, 3, 6, 3, 1, 2),
]
LOW_PRECISION = (torch.float16, torch.bfloat16)


def inputs(case, dtype=torch.float32, seed=0):
    """(features, masks) of ``case``, inexact sums."""
    n, c, h, w, k, g, s = case
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, c, h, w, generator=generator)
    masks = torch.randn(n, g * k * k, s * h, s * w, generator=generator)
    return features.to(dtype), masks.to(dtype)


def forward(case, features, masks, order=None, variant="auto"):
    """The output by the kernels (canaries checked) and the kernels launched."""
    *_, k, g, s = case
    with _planner.forced_variant(variant), harness.simulator(order):
        with _launch_record.recording() as records:
            output = harness.run_forward(features, masks, k, g, s)
    return output, [record.kernel for record in records]


def quad_forward(case, dtype=torch.float32, order=None):
    output, kernels = forward(case, *inputs(case, dtype), order)
    assert kernels and all("forward_tiled" in name and "_p4_" in name for name in kernels)
    return output


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_the_reference_and_the_one_pixel_kernel_bit_for_bit(case):
    output = quad_forward(case)
    features, masks = inputs(case)
    *_, k, g, s = case
    want = gather_carafe(features.numpy(), masks.numpy(), k, g, s)
    np.testing.assert_allclose(output.double().numpy(), want, rtol=1e-5, atol=1e-5)
    single, kernels = forward(case, features, masks, variant="tiled")
    assert all("_p1_" in name for name in kernels)
    assert torch.equal(output.view(torch.int32), single.view(torch.int32))


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("case", CASES[:3], ids=str)
def test_low_precision_equals_the_rounded_fp32_kernel(case, dtype):
    got = quad_forward(case, dtype)
    # the fp32 kernel on the same (exactly representable) values, rounded once
    wide, _ = forward(case, *(t.float() for t in inputs(case, dtype)))
    bits = harness.BITS[dtype]
    assert torch.equal(got.view(bits), wide.to(dtype).view(bits))


@pytest.mark.parametrize("case", CASES[1:3], ids=str)
def test_every_thread_order_gives_the_same_bits(case):
    results = [quad_forward(case, order=order) for order in ORDERS]
    assert all(torch.equal(results[0].view(torch.int32), r.view(torch.int32)) for r in results)


def outside_taps(case) -> torch.Tensor:
    """Bool, masks-shaped: True where a tap's input pixel lies outside the image."""
    n, _, h, w, k, g, s = case
    radius = (k - 1) // 2
    taps = torch.arange(k * k)
    rows = torch.arange(s * h) // s + (taps // k - radius)[:, None]  # (taps, out rows)
    cols = torch.arange(s * w) // s + (taps % k - radius)[:, None]
    row_out = (rows < 0) | (rows >= h)
    col_out = (cols < 0) | (cols >= w)
    outside = row_out[:, :, None] | col_out[:, None, :]  # (taps, out rows, out cols)
    return outside.repeat(g, 1, 1).expand(n, -1, -1, -1)


@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=str)
@pytest.mark.parametrize("case", [CASES[0], CASES[2]], ids=str)
def test_an_outside_taps_mask_is_never_used(case, value):
    # Inf or NaN masks on every tap outside the image (rows and columns): the
    # output is the reference's, which skips those taps (and stays finite)
    features, masks = inputs(case)
    masks = masks.masked_fill(outside_taps(case), value)
    output, kernels = forward(case, features, masks)
    assert all("_p4_" in name for name in kernels)
    *_, k, g, s = case
    want = gather_carafe(features.numpy(), masks.numpy(), k, g, s)
    assert np.isfinite(want).all()
    np.testing.assert_allclose(output.double().numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weak_barriers, order", [(1, "random-warp"), (2, "forward")])
def test_weakened_barriers_give_wrong_answers(weak_barriers, order, monkeypatch):
    """Barriers that do not hold the whole block (built with
    -DCARAFE_SIM_WEAK_BARRIERS; the kernel source untouched) give wrong answers."""
    monkeypatch.setenv("CARAFE_CUPY_SIM_CXXFLAGS", f"-DCARAFE_SIM_WEAK_BARRIERS={weak_barriers}")
    case = (1, 9, 5, 9, 3, 1, 2)
    features, masks = inputs(case)
    output, kernels = forward(case, features, masks, order)
    assert all("_p4_" in name for name in kernels)
    want = gather_carafe(features.numpy(), masks.numpy(), 3, 1, 2)
    assert not np.allclose(output.double().numpy(), want, rtol=1e-4, atol=1e-4)


def test_a_whole_batchs_channel_step_past_2_to_the_31(tmp_path):
    # features whose channel stride times the batch of 4 passes 2**31 elements: the
    # next batch's loads start a 64-bit step away (6 channels: a whole batch, then
    # a partial one), bit for bit the result on a compact copy
    case = (1, 6, 3, 4, 3, 1, 2)
    features, masks = inputs(case)
    n, c, h, w = features.shape
    geometry = _launch.Geometry(n, c, h, w, 3, 1, 2)
    output = torch.full((n, c, 2 * h, 2 * w), float("nan"))
    arena = SparseArena(tmp_path)
    try:
        strides = (c * 2**29, 2**29 + 2**10, w + 2, 1)
        far = arena.tensor(features, features.shape, strides, features.dtype)
        refs = [_torch_common.tensor_ref(t) for t in (far, masks, output)]
        with harness.simulator(), _launch_record.recording() as records:
            _launch.launch_forward(geometry, *refs)
        del far, refs
    finally:
        arena.close()
    assert [r.kernel for r in records] == ["carafe_forward_tiled_k3_p4_float32"]
    assert records[0].channel_batches == 2
    compact, _ = forward(case, features, masks)
    assert torch.equal(output.view(torch.int32), compact.view(torch.int32))
