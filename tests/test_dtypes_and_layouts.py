"""Result dtypes beyond the plain forward, and layouts the front ends must keep.

- dtypes: every backward returns each gradient in its input's dtype (mixed fp16
  features and fp32 masks included), and ``carafe_from_logits`` returns the promoted
  dtype, on the pure-PyTorch path, the simulated kernels, and the array front end.
- layouts: arrays with negative strides (flipped numpy or CuPy views) are read in
  place, through every kernel variant; contiguous inputs that also count as
  channels_last (C = 1, or H = W = 1) come back contiguous, as torch's own
  ``empty_like`` would make them.
"""

from __future__ import annotations

import shutil
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402
from carafe_cupy import arrays, mmcv_compat  # noqa: E402
from carafe_cupy._plan import planner as _planner  # noqa: E402

HAS_COMPILER = shutil.which("g++") is not None or shutil.which("c++") is not None
NEEDS_COMPILER = pytest.mark.skipif(not HAS_COMPILER, reason="the simulator needs g++ or c++")
BACKENDS = ["cpu", pytest.param("simulator", marks=NEEDS_COMPILER)]
K, G, S = 3, 2, 2
F16, F32, F64, BF16 = torch.float16, torch.float32, torch.float64, torch.bfloat16


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """The pure-PyTorch path, or the real kernels on the CPU simulator."""
    if request.param == "simulator":
        monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    else:
        monkeypatch.delenv("CARAFE_CUPY_SIMULATOR", raising=False)
    return request.param


@pytest.fixture
def simulator(monkeypatch):
    if not HAS_COMPILER:
        pytest.skip("the simulator needs g++ or c++")
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")


def inputs(features_dtype=F32, masks_dtype=F32, grad_dtype=F32, n=1, c=4, h=3, w=5):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(n, c, h, w, generator=generator).to(features_dtype)
    masks = torch.rand(n, G * K * K, h * S, w * S, generator=generator).to(masks_dtype)
    grad_output = torch.randn(n, c, h * S, w * S, generator=generator).to(grad_dtype)
    return grad_output, features, masks


def logits_like(features, dtype):
    n, _, h, w = features.shape
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, G * K * K * S * S, h, w, generator=generator).to(dtype)


MIXED = [(F16, F32), (F32, F16), (F32, BF16), (F64, F32), (BF16, F64)]


# ---------------------------------------------------------------- torch dtypes


@pytest.mark.parametrize("features_dtype, masks_dtype", MIXED)
def test_public_backward_gradients_keep_their_inputs_dtypes(backend, features_dtype, masks_dtype):
    grad_output, features, masks = inputs(features_dtype, masks_dtype)
    for backward in (carafe_cupy.carafe_backward, carafe_cupy.reassemble_backward):
        grad_features, grad_masks = backward(grad_output, features, masks, K, G, S)
        assert (grad_features.dtype, grad_masks.dtype) == (features_dtype, masks_dtype)


def test_strided_backward_gradients_keep_their_inputs_dtypes(backend):
    features = torch.randn(1, 4, 7, 5, dtype=F16)
    kernels = torch.rand(1, G * K * K, 4, 3)
    grad_output = torch.randn(1, 4, 4, 3, dtype=F64)
    grad_features, grad_kernels = carafe_cupy.reassemble_backward(
        grad_output, features, kernels, K, G, 1, 2, 1
    )
    assert (grad_features.dtype, grad_kernels.dtype) == (F16, F32)


@pytest.mark.parametrize("features_dtype, masks_dtype", MIXED)
def test_carafe_function_gradients_keep_their_inputs_dtypes(backend, features_dtype, masks_dtype):
    """mmcv's Function, its backward called as autograd calls it (autograd itself would
    cast a wrong dtype back silently, so .grad alone cannot show it)."""
    grad_output, features, masks = inputs(features_dtype, masks_dtype)
    context = types.SimpleNamespace(saved_tensors=(features, masks), params=(K, G, S))
    grad_features, grad_masks, *rest = mmcv_compat.CARAFEFunction.backward(context, grad_output)
    assert (grad_features.dtype, grad_masks.dtype) == (features_dtype, masks_dtype)
    assert rest == [None, None, None]

    features.requires_grad_()
    masks.requires_grad_()
    output = mmcv_compat.CARAFEFunction.apply(features, masks, K, G, S)
    assert output.dtype == torch.promote_types(features_dtype, masks_dtype)
    output.backward(grad_output.to(output.dtype))
    assert (features.grad.dtype, masks.grad.dtype) == (features_dtype, masks_dtype)


@pytest.mark.parametrize("dtype", [F32, F64, F16, BF16])
def test_backward_ops_return_their_inputs_dtype_and_strides(backend, dtype):
    grad_output, features, masks = inputs(dtype, dtype, dtype)
    masks = masks.contiguous(memory_format=torch.channels_last)
    grads = torch.ops.carafe_cupy.carafe_backward(grad_output, features, masks, K, G, S)
    for grad, given in zip(grads, (features, masks)):
        assert (grad.dtype, grad.stride()) == (dtype, given.stride())
    logits = logits_like(features, dtype)
    grads = torch.ops.carafe_cupy.carafe_fused_backward(grad_output, features, logits, K, G, S)
    for grad, given in zip(grads, (features, logits)):
        assert (grad.dtype, grad.shape) == (dtype, given.shape)


@pytest.mark.parametrize(
    "features_dtype, logits_dtype", [(F16, F32), (F32, F16), (BF16, BF16), (F32, F64), (F16, F16)]
)
def test_carafe_from_logits_promotes_and_its_gradients_keep_their_dtypes(
    backend, features_dtype, logits_dtype
):
    grad_output, features, _ = inputs(features_dtype)
    logits = logits_like(features, logits_dtype).requires_grad_()
    features.requires_grad_()
    output = carafe_cupy.carafe_from_logits(features, logits, K, G, S)
    assert output.dtype == torch.promote_types(features_dtype, logits_dtype)
    output.backward(grad_output.to(output.dtype))
    assert (features.grad.dtype, logits.grad.dtype) == (features_dtype, logits_dtype)


# ---------------------------------------------------------------- array front end dtypes

NUMPY_MIXED = [
    (np.float16, np.float32, np.float32),
    (np.float32, np.float16, np.float16),
    (np.float32, np.float32, np.float64),  # a wider grad_output changes neither gradient
    (np.float64, np.float16, np.float32),
]


@pytest.mark.parametrize("features_dtype, masks_dtype, grad_dtype", NUMPY_MIXED)
def test_numpy_backward_gradients_keep_their_inputs_dtypes(
    simulator, features_dtype, masks_dtype, grad_dtype
):
    grad_output, features, masks = (
        x.numpy().astype(dtype)
        for x, dtype in zip(inputs(), (grad_dtype, features_dtype, masks_dtype))
    )
    for backward in (carafe_cupy.carafe_backward, arrays.reassemble_backward):
        grad_features, grad_masks = backward(grad_output, features, masks, K, G, S)
        assert (grad_features.dtype, grad_masks.dtype) == (features_dtype, masks_dtype)
    output = carafe_cupy.carafe(features, masks, K, G, S)
    assert output.dtype == np.result_type(features_dtype, masks_dtype)


# ---------------------------------------------------------------- negative strides

FLIPS = {
    "features flipped in x": {"features": (3,)},
    "masks flipped in y": {"masks": (2,)},
    "grad_output flipped in c": {"grad_output": (1,)},
    "everything flipped in y and x": {
        name: (2, 3) for name in ("features", "masks", "grad_output")
    },
    "images and channels flipped": {"features": (0, 1), "masks": (0,), "grad_output": (0, 1)},
}


@pytest.mark.parametrize("variant", ["auto", "general", "tiled"])
@pytest.mark.parametrize("flip", FLIPS)
def test_flipped_arrays_are_read_in_place(simulator, flip, variant):
    """numpy (and CuPy) views with negative strides: the kernels take the strides as
    signed 64-bit numbers, so the result is that of a contiguous copy."""
    grad_output, features, masks = (x.numpy() for x in inputs(n=2))
    arrays = {"grad_output": grad_output, "features": features, "masks": masks}
    flipped = {}
    for name, array in arrays.items():
        axes = FLIPS[flip].get(name, ())
        # the same values, laid out backwards along ``axes``
        view = np.flip(np.ascontiguousarray(np.flip(array, axes)), axes) if axes else array
        assert all(view.strides[axis] < 0 for axis in axes)
        flipped[name] = view
    with _planner.forced_variant(variant):
        want = carafe_cupy.carafe(features, masks, K, G, S)
        got = carafe_cupy.carafe(flipped["features"], flipped["masks"], K, G, S)
        want_grads = carafe_cupy.carafe_backward(grad_output, features, masks, K, G, S)
        got_grads = carafe_cupy.carafe_backward(
            flipped["grad_output"], flipped["features"], flipped["masks"], K, G, S
        )
    np.testing.assert_array_equal(got, want)
    for got_grad, want_grad in zip(got_grads, want_grads):
        np.testing.assert_array_equal(got_grad, want_grad)
        assert got_grad.flags.c_contiguous  # results are allocated fresh


def test_flipped_rows_keep_the_pair_kernels_and_flipped_columns_drop_them(simulator):
    from carafe_cupy._plan import record as _record

    _, features, masks = (x.numpy() for x in inputs())
    want = carafe_cupy.carafe(features, masks, K, G, S)
    for axis, pairs in ((2, True), (3, False)):
        view = np.flip(np.ascontiguousarray(np.flip(masks, axis)), axis)
        with _record.recording() as launches:
            got = carafe_cupy.carafe(features, view, K, G, S)
        np.testing.assert_array_equal(got, want)
        assert [record.variant for record in launches] == ["tiled_pair" if pairs else "tiled"]


# ---------------------------------------------------------------- contiguous or channels_last

AMBIGUOUS = {
    "one channel": (2, 1, 3, 4),  # C = 1: contiguous and channels_last at once
    "one pixel": (2, 3, 1, 1),  # H = W = 1: likewise
}


def contiguous_strides(shape):
    return torch.empty(shape).stride()


@pytest.mark.parametrize("shape", AMBIGUOUS.values(), ids=list(AMBIGUOUS))
def test_contiguous_inputs_that_are_also_channels_last_come_back_contiguous(backend, shape):
    n, c, h, w = shape
    features = torch.randn(shape, requires_grad=True)
    masks = torch.rand(n, K * K, h * S, w * S, requires_grad=True)
    assert features.is_contiguous()
    assert features.is_contiguous(memory_format=torch.channels_last)
    output = carafe_cupy.carafe(features, masks, K, 1, S)
    assert output.stride() == contiguous_strides(output.shape)
    logits = torch.randn(n, K * K * S * S, h, w)
    fused = carafe_cupy.carafe_from_logits(features, logits, K, 1, S)
    assert fused.stride() == contiguous_strides(fused.shape)
    output.backward(torch.ones_like(output))
    assert features.grad.stride() == features.stride()
    assert masks.grad.stride() == masks.stride()


def test_channels_last_inputs_come_back_channels_last(backend):
    features = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    masks = torch.rand(2, K * K, 8, 10)
    output = carafe_cupy.carafe(features, masks, K, 1, S)
    assert not output.is_contiguous()
    assert output.is_contiguous(memory_format=torch.channels_last)
