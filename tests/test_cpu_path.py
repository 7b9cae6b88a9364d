"""The CPU paths, the compiled kernels and pure PyTorch, against the naive
reference (runs everywhere)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402

from cases import (  # noqa: E402
    assert_close,
    config_id,
    config_matrix,
    exact_expected,
    make_exact_inputs,
    make_inputs,
    torch_dtypes,
)
from cpu_paths import cpu_path  # noqa: E402, F401  (each test on both CPU paths)
from naive import naive_carafe, naive_carafe_backward  # noqa: E402

DTYPES = torch_dtypes()


def rounded(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(array).to(dtype)


def run(features, masks, grad_output, params, device="cpu"):
    features = features.detach().to(device).clone().requires_grad_()
    masks = masks.detach().to(device).clone().requires_grad_()
    output = carafe_cupy.carafe(features, masks, *params)
    output.backward(grad_output.to(device))
    return output, features.grad, masks.grad


@pytest.mark.parametrize("config", config_matrix(), ids=config_id)
def test_matrix_matches_naive_in_every_dtype(config):
    *_, k, g, s = config
    want_output, want_grad_features, want_grad_masks = exact_expected(config)
    for dtype_name, dtype in DTYPES.items():
        inputs = [torch.from_numpy(a).to(dtype) for a in make_exact_inputs(config)]
        output, grad_features, grad_masks = run(*inputs, (k, g, s))
        assert output.dtype == grad_features.dtype == grad_masks.dtype == dtype
        assert_close(output.detach().double(), want_output, dtype_name, "output")
        assert_close(grad_features.double(), want_grad_features, dtype_name, "grad_features")
        assert_close(grad_masks.double(), want_grad_masks, dtype_name, "grad_masks")


@pytest.mark.parametrize("params", [(3, 1, 2), (5, 2, 2), (1, 1, 3), (7, 2, 1)])
def test_gradcheck_float64(params):
    k, g, s = params
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 2 * g, 3, 3, dtype=torch.float64, generator=generator)
    masks = torch.rand(1, g * k * k, 3 * s, 3 * s, dtype=torch.float64, generator=generator)
    features.requires_grad_()
    masks.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: carafe_cupy.carafe(a, b, k, g, s), (features, masks)
    )


def test_non_contiguous_inputs():
    config = (2, 4, 5, 6, 5, 2, 2)
    features, masks, grad_output = (torch.from_numpy(a) for a in make_inputs(config))
    # transposed storage and strided slices of larger tensors
    features_nc = features.transpose(2, 3).contiguous().transpose(2, 3)
    masks_nc = torch.zeros(2, 100, 10, 24, dtype=torch.float64)[:, ::2, :, ::2]
    masks_nc.copy_(masks)
    grad_nc = grad_output.expand(2, 4, 10, 12)[:, :, :, :]
    assert not features_nc.is_contiguous() and not masks_nc.is_contiguous()
    output, grad_features, grad_masks = run(features_nc, masks_nc, grad_nc, (5, 2, 2))
    assert_close(output.detach(), naive_carafe(*make_inputs(config)[:2], 5, 2, 2), "float64", "out")
    expected_gf, expected_gm = naive_carafe_backward(
        grad_output.numpy(), features.numpy(), masks.numpy(), 5, 2, 2
    )
    assert_close(grad_features, expected_gf, "float64", "grad_features")
    assert_close(grad_masks, expected_gm, "float64", "grad_masks")


def test_broadcast_grad_output_from_sum():
    features = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    masks = torch.rand(1, 9, 6, 6, dtype=torch.float64, requires_grad=True)
    carafe_cupy.carafe(features, masks, 3, 1, 2).sum().backward()
    _, expected_gm = naive_carafe_backward(
        np.ones((1, 2, 6, 6)), features.detach().numpy(), masks.detach().numpy(), 3, 1, 2
    )
    assert_close(masks.grad, expected_gm, "float64", "grad_masks")


def test_channels_last_in_channels_last_out():
    features = torch.randn(2, 8, 5, 4).to(memory_format=torch.channels_last)
    masks = torch.rand(2, 2 * 9, 10, 8).to(memory_format=torch.channels_last)
    output = carafe_cupy.carafe(features, masks, 3, 2, 2)
    assert output.is_contiguous(memory_format=torch.channels_last)
    expected = naive_carafe(features.numpy(), masks.numpy(), 3, 2, 2)
    assert_close(output, expected, "float32", "output")
    contiguous_out = carafe_cupy.carafe(features.contiguous(), masks, 3, 2, 2)
    assert contiguous_out.is_contiguous()



@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_gradients_come_back_in_their_inputs_layout(layout):
    features = torch.randn(2, 8, 5, 4).to(memory_format=layout).requires_grad_()
    masks = torch.rand(2, 2 * 9, 10, 8).to(memory_format=layout).requires_grad_()
    # autograd.grad, not .grad: accumulation into .grad would restride a stray layout
    output = carafe_cupy.carafe(features, masks, 3, 2, 2)
    grad_features, grad_masks = torch.autograd.grad(output.sum(), (features, masks))
    assert grad_features.stride() == features.stride()
    assert grad_masks.stride() == masks.stride()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_fp32_and_rounds_once(dtype):
    # 64 channels x 25 taps of sums: fp16/bf16 accumulators would round on the way
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(1, 64, 6, 5, generator=generator).to(dtype).requires_grad_()
    masks = torch.rand(1, 25, 12, 10, generator=generator).to(dtype).requires_grad_()
    wide = [t.detach().float().requires_grad_() for t in (features, masks)]
    output = carafe_cupy.carafe(features, masks, 5, 1, 2)
    expected = carafe_cupy.carafe(*wide, 5, 1, 2)
    assert torch.equal(output, expected.to(dtype))
    grad = torch.randn(output.shape, generator=generator).to(dtype)
    got = torch.autograd.grad(output, (features, masks), grad)
    want = torch.autograd.grad(expected, wide, grad.float())
    for name, value, reference in zip(("grad_features", "grad_masks"), got, want):
        assert torch.equal(value, reference.to(dtype)), name

def test_empty_batch():
    features = torch.randn(0, 4, 3, 3, requires_grad=True)
    masks = torch.rand(0, 2 * 25, 6, 6, requires_grad=True)
    output = carafe_cupy.carafe(features, masks, 5, 2, 2)
    assert output.shape == (0, 4, 6, 6)
    output.sum().backward()
    assert features.grad.shape == features.shape and masks.grad.shape == masks.shape


def test_mixed_dtypes_follow_type_promotion():
    features = torch.randn(1, 2, 3, 3, dtype=torch.float16, requires_grad=True)
    masks = torch.rand(1, 9, 6, 6, dtype=torch.float32, requires_grad=True)
    output = carafe_cupy.carafe(features, masks, 3, 1, 2)
    assert output.dtype == torch.promote_types(torch.float16, torch.float32)
    output.sum().backward()
    assert features.grad.dtype == torch.float16 and masks.grad.dtype == torch.float32


def test_inputs_are_not_modified():
    features = torch.randn(1, 4, 3, 3)
    masks = torch.rand(1, 2 * 9, 6, 6)
    before = features.clone(), masks.clone()
    carafe_cupy.carafe(features, masks, 3, 2, 2)
    assert torch.equal(features, before[0]) and torch.equal(masks, before[1])


def test_module_matches_functional():
    features = torch.randn(1, 4, 3, 3)
    masks = torch.rand(1, 2 * 9, 6, 6)
    module = carafe_cupy.CARAFE(3, 2, 2)
    expected = carafe_cupy.carafe(features, masks, 3, 2, 2)
    torch.testing.assert_close(module(features, masks), expected)


def test_backward_function_matches_autograd():
    config = (2, 4, 3, 4, 3, 2, 2)
    features, masks, grad_output = (torch.from_numpy(a) for a in make_inputs(config))
    grad_features, grad_masks = carafe_cupy.carafe_backward(grad_output, features, masks, 3, 2, 2)
    expected_gf, expected_gm = naive_carafe_backward(
        grad_output.numpy(), features.numpy(), masks.numpy(), 3, 2, 2
    )
    assert_close(grad_features, expected_gf, "float64", "grad_features")
    assert_close(grad_masks, expected_gm, "float64", "grad_masks")


def test_backward_is_deterministic():
    config = (2, 8, 6, 5, 5, 4, 3)
    inputs = [torch.from_numpy(a).float() for a in make_inputs(config)]
    first = carafe_cupy.carafe_backward(inputs[2], inputs[0], inputs[1], 5, 4, 3)
    second = carafe_cupy.carafe_backward(inputs[2], inputs[0], inputs[1], 5, 4, 3)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
