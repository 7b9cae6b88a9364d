"""The fused forward with 2 x 2 output pixels per thread (even s, k <= 5, fp32,
fp16, bf16): the softmax of each pixel's logits normalised in registers. Against
the float64 reference with canaries around every tensor; bit for bit equal to
the one-pixel fused kernel (one softmax sequence, one summation order); fp16 and
bf16 equal to the rounding of the fp32 kernel; the same bits in every simulator
thread order; a logit row step (s channels) and tap step (s * s channels) past
2**31 elements; and wrong with weakened barriers."""

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

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)

ORDERS = ("forward", "reverse", "random", "warp-serial", "random-warp")
# (N, C, H, W, k, G, s): a partial batch after a whole one; only a partial batch
# (3 channels a group) over tiles past the first in x and y; s = 4 and 6 (four
# pixels at sub-pixels other than (0, 0)); several channel slices, the last with
# a partial batch.
CASES = [
    (1, 5, 5, 7, 5, 1, 2),
    (2, 6, 9, 37, 5, 2, 2),
    (1, 9, 4, 33, 3, 1, 4),
    (1, 7, 6, 5, 5, 1, 6),
    (1, 38, 3, 6, 3, 1, 2),
]
LOW_PRECISION = (torch.float16, torch.bfloat16)


def inputs(case, dtype=torch.float32, seed=0):
    """(features, logits) of ``case``; logits spread a few units, so the
    softmax weights differ from tap to tap."""
    n, c, h, w, k, g, s = case
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, c, h, w, generator=generator)
    logits = 3 * torch.randn(n, g * k * k * s * s, h, w, generator=generator)
    return features.to(dtype), logits.to(dtype)


def fused_forward(case, features, logits, order=None, variant="auto"):
    """The fused output by the kernels (canaries checked) and the kernels launched."""
    n, c, h, w, k, g, s = case
    geometry = _launch.Geometry(n, c, h, w, k, g, s)
    assert _planner.fused_supported(geometry, _torch_common.dtype_name(features.dtype))
    f = harness.framed(features.shape, features.dtype, 2, features)
    lg = harness.framed(logits.shape, logits.dtype, 2, logits)
    out = harness.framed((n, c, h * s, w * s), features.dtype, 2)
    with _planner.forced_variant(variant), harness.simulator(order):
        with _launch_record.recording() as records:
            _launch.launch_fused_forward(geometry, f.ref(), lg.ref(), out.ref())
    for what, tensor in (("output", out), ("features", f), ("logits", lg)):
        tensor.check_canaries(what)
    return out.view.clone(), [record.kernel for record in records]


def quad_forward(case, dtype=torch.float32, order=None):
    output, kernels = fused_forward(case, *inputs(case, dtype), order)
    assert kernels and all("fused_forward" in name and "_p4_" in name for name in kernels)
    return output


def reference(case, features, logits):
    *_, k, g, s = case
    grad_output = torch.zeros(features.shape[0], features.shape[1], *logits.shape[2:])
    grad_output = grad_output.repeat_interleave(s, 2).repeat_interleave(s, 3)
    return harness.fused_reference(grad_output, features, logits, k, g, s)[0]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_the_reference_and_the_one_pixel_kernel_bit_for_bit(case):
    output = quad_forward(case)
    features, logits = inputs(case)
    np.testing.assert_allclose(
        output.double().numpy(), reference(case, features, logits), rtol=1e-5, atol=1e-5
    )
    single, kernels = fused_forward(case, features, logits, variant="tiled")
    assert kernels and all("fused_forward" in name and "_p" not in name for name in kernels)
    assert torch.equal(output.view(torch.int32), single.view(torch.int32))


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("case", CASES[:3], ids=str)
def test_low_precision_equals_the_rounded_fp32_kernel(case, dtype):
    got = quad_forward(case, dtype)
    # the fp32 kernel on the same (exactly representable) values, rounded once
    wide, _ = fused_forward(case, *(t.float() for t in inputs(case, dtype)))
    bits = harness.BITS[dtype]
    assert torch.equal(got.view(bits), wide.to(dtype).view(bits))


@pytest.mark.parametrize("case", CASES[1:4], ids=str)
def test_every_thread_order_gives_the_same_bits(case):
    results = [quad_forward(case, order=order) for order in ORDERS]
    assert all(torch.equal(results[0].view(torch.int32), r.view(torch.int32)) for r in results)


def test_each_pixel_of_the_quad_reads_its_own_logits():
    # one logit channel of each sub-pixel made large in turn: only that sub-pixel's
    # outputs change, in the one-pixel kernel's bits
    case = (1, 3, 3, 4, 3, 1, 2)
    features, logits = inputs(case)
    base = quad_forward_of(case, features, logits)
    for sub in range(4):  # sub-pixel (a, b) = divmod(sub, 2), tap 4 (the centre)
        changed = logits.clone()
        changed[:, 4 * 4 + sub] += 5.0
        output = quad_forward_of(case, features, changed)
        single, _ = fused_forward(case, features, changed, variant="tiled")
        assert torch.equal(output.view(torch.int32), single.view(torch.int32))
        a, b = divmod(sub, 2)
        moved = (output != base).any(dim=(0, 1))
        assert moved[a::2, b::2].all() and moved.sum() == moved[a::2, b::2].numel()


def quad_forward_of(case, features, logits):
    output, kernels = fused_forward(case, features, logits)
    assert all("_p4_" in name for name in kernels)
    return output


@pytest.mark.parametrize("weak_barriers, order", [(1, "random-warp"), (2, "forward")])
def test_weakened_barriers_give_wrong_answers(weak_barriers, order, monkeypatch):
    """Barriers that do not hold the whole block (built with
    -DCARAFE_SIM_WEAK_BARRIERS; the kernel source untouched) give wrong answers."""
    monkeypatch.setenv("CARAFE_CUPY_SIM_CXXFLAGS", f"-DCARAFE_SIM_WEAK_BARRIERS={weak_barriers}")
    case = (1, 9, 5, 9, 3, 1, 2)
    features, logits = inputs(case)
    output, kernels = fused_forward(case, features, logits, order)
    assert all("_p4_" in name for name in kernels)
    want = reference(case, features, logits)
    assert not np.allclose(output.double().numpy(), want, rtol=1e-4, atol=1e-4)


def test_logit_row_and_tap_steps_past_2_to_the_31(tmp_path):
    # logits whose channel stride times s (the quad's second row) and times s * s
    # (one tap) pass 2**31 elements: bit for bit the result on compact copies
    case = (1, 6, 3, 4, 3, 1, 2)
    features, logits = inputs(case)
    n, c, h, w, k, g, s = case
    geometry = _launch.Geometry(n, c, h, w, k, g, s)
    output = torch.full((n, c, s * h, s * w), float("nan"))
    arena = SparseArena(tmp_path)
    try:
        pitch = w + 2
        strides = (h * pitch, 2**30 + 2**12, pitch, 1)
        far = arena.tensor(logits, logits.shape, strides, logits.dtype)
        refs = [_torch_common.tensor_ref(t) for t in (features, far, output)]
        with harness.simulator(), _launch_record.recording() as records:
            _launch.launch_fused_forward(geometry, *refs)
        del far, refs
    finally:
        arena.close()
    assert [r.kernel for r in records] == ["carafe_fused_forward_k3_p4_float32"]
    compact = quad_forward_of(case, features, logits)
    assert torch.equal(output.view(torch.int32), compact.view(torch.int32))
