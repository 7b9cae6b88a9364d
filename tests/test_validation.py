"""Bad inputs get a ValueError/TypeError naming the argument and what was expected."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402


def good_inputs(dtype=torch.float32):
    return torch.randn(1, 4, 3, 3, dtype=dtype), torch.rand(1, 2 * 9, 6, 6, dtype=dtype)


F, M = good_inputs()

CASES = [
    # (features, masks, k, G, s, error type, words the message must contain)
    (F[0], M, 3, 2, 2, ValueError, ["features", "4-D", "3-D"]),
    (F, M[0], 3, 2, 2, ValueError, ["masks", "4-D"]),
    (F, M, 4, 2, 2, ValueError, ["kernel_size", "odd", "4"]),
    (F, M, 0, 2, 2, ValueError, ["kernel_size", ">= 1", "0"]),
    (F, M, -3, 2, 2, ValueError, ["kernel_size", ">= 1"]),
    (F, M, 3.0, 2, 2, TypeError, ["kernel_size", "int", "float"]),
    (F, M, 3, 0, 2, ValueError, ["group_size", ">= 1"]),
    (F, M, 3, 3, 2, ValueError, ["group_size", "divide", "C=4"]),
    (F, M, 3, 2, 0, ValueError, ["scale_factor", ">= 1"]),
    (F, M, 3, 2, -2, ValueError, ["scale_factor", ">= 1"]),
    (F, M, 3, 2, 2.0, TypeError, ["scale_factor", "int", "2.0"]),
    (F, M, 3, 2, True, TypeError, ["scale_factor", "int", "bool"]),
    (F, M, 3, 2, "2", TypeError, ["scale_factor", "int", "str"]),
    (F, M[:, :9], 3, 2, 2, ValueError, ["masks", "(1, 18, 6, 6)", "(1, 9, 6, 6)"]),
    (F, M[:, :, :5], 3, 2, 2, ValueError, ["masks", "(1, 18, 6, 6)", "(1, 18, 5, 6)"]),
    (F, M, 3, 2, 3, ValueError, ["masks", "(1, 18, 9, 9)"]),
    (F[:1], torch.rand(2, 18, 6, 6), 3, 2, 2, ValueError, ["masks", "(1, 18, 6, 6)"]),
    (F.int(), M, 3, 2, 2, TypeError, ["features", "floating", "int32"]),
    (F, M.bool(), 3, 2, 2, TypeError, ["masks", "floating", "bool"]),
    (F.to(torch.complex64), M, 3, 2, 2, TypeError, ["features", "complex64"]),
    (F, M.to("meta"), 3, 2, 2, ValueError, ["device", "features on cpu", "masks on meta"]),
    (F.numpy(), M, 3, 2, 2, TypeError, ["features", "torch.Tensor", "numpy.ndarray"]),
    (F, M.numpy(), 3, 2, 2, TypeError, ["masks"]),
    ([1.0], [2.0], 3, 2, 2, TypeError, ["features", "torch.Tensor or cupy.ndarray", "list"]),
    (torch.randn(1, 4, 0, 3), torch.rand(1, 18, 0, 6), 3, 2, 2, ValueError, ["H, W >= 1"]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: " ".join(case[-1])[:40])
def test_bad_input_raises_clear_error(case):
    features, masks, k, g, s, error, words = case
    snapshot = [
        x.clone() if isinstance(x, torch.Tensor) and x.device.type == "cpu" else None
        for x in (features, masks)
    ]
    with pytest.raises(error) as info:
        carafe_cupy.carafe(features, masks, k, g, s)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    for before, after in zip(snapshot, (features, masks)):
        if before is not None:
            assert torch.equal(before, after), "input was modified"


def test_backward_checks_grad_output_shape():
    features, masks = good_inputs()
    with pytest.raises(ValueError, match="grad_output"):
        carafe_cupy.carafe_backward(torch.ones(1, 4, 5, 5), features, masks, 3, 2, 2)


def test_module_validates_at_construction():
    with pytest.raises(ValueError, match="kernel_size"):
        carafe_cupy.CARAFE(2, 1, 2)
    with pytest.raises(TypeError, match="scale_factor"):
        carafe_cupy.CARAFE(3, 1, 2.5)


def test_numpy_integer_arguments_are_accepted():
    features, masks = good_inputs()
    output = carafe_cupy.carafe(features, masks, np.int64(3), np.int32(2), np.int8(2))
    assert output.shape == (1, 4, 6, 6)
