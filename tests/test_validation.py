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
    (F[None], M, 3, 2, 2, ValueError, ["features", "4-D", "5-D"]),
    (F, M, None, 2, 2, TypeError, ["kernel_size", "int", "NoneType"]),
    (F, M, np.float64(3.0), 2, 2, TypeError, ["kernel_size", "int", "float64"]),
    (F, M, 3, 2.0, 2, TypeError, ["group_size", "int", "float"]),
    (F, M, 3, -2, 2, ValueError, ["group_size", ">= 1", "-2"]),
    (F, M, 3, 2, 2.5, TypeError, ["scale_factor", "int", "2.5"]),
    (F, M, 3, 2, np.float32(2.0), TypeError, ["scale_factor", "int", "float32"]),
    (F, M.long(), 3, 2, 2, TypeError, ["masks", "floating", "int64"]),
    (F.to(torch.uint8), M, 3, 2, 2, TypeError, ["features", "floating", "uint8"]),
    (F, M.to(torch.complex128), 3, 2, 2, TypeError, ["masks", "floating", "complex128"]),
    (F.to("meta"), M, 3, 2, 2, ValueError, ["device", "features on meta", "masks on cpu"]),
    (F, [[2.0]], 3, 2, 2, TypeError, ["masks", "torch.Tensor", "list"]),
    # sizes whose element count passes what 64-bit indices address (meta: no memory)
    (
        torch.empty(1, 2**20, 2**20, 2**20, device="meta"),
        torch.empty(1, 1, 2**22, 2**22, device="meta"),
        *(1, 1, 4),
        ValueError,
        ["output", "N*C*(H*s)*(W*s)", str(2**64), "64-bit"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: " ".join(case[-1])[:40])
def test_bad_input_raises_clear_error(case):
    features, masks, k, g, s, error, words = case
    snapshot = _cpu_snapshot((features, masks))
    with pytest.raises(error) as info:
        carafe_cupy.carafe(features, masks, k, g, s)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    _assert_unchanged(snapshot, (features, masks))



@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: carafe_cupy.carafe(F, M, 5, 1, 1.5), ["s (scale_factor)", "whole number", "1.5"]),
        (lambda: carafe_cupy.carafe(F, M, 3.5, 2, 2), ["k (kernel_size)", "whole number"]),
        (lambda: carafe_cupy.carafe(F, M, 3, 2.5, 2), ["G (group_size)", "whole number"]),
        (lambda: carafe_cupy.carafe(F, M, 3, 2, -2.0), ["s (scale_factor)", "whole number >= 1"]),
        (
            lambda: carafe_cupy.reassemble(F, M, 3, 2, 1, stride=1.5),
            ["t (stride)", "whole number", "1.5"],
        ),
        (
            lambda: carafe_cupy.reassemble(F, M, 3, 2, 1, dilation=np.float32(1.5)),
            ["d (dilation)", "whole number"],
        ),
        (lambda: carafe_cupy.CARAFEPack(16, 2, up_group=1.5), ["G (up_group)", "whole number"]),
        (lambda: carafe_cupy.CARAFEPack(16.5, 2), ["channels must be a whole number"]),
    ],
    ids=lambda value: value[0] if isinstance(value, list) else "",
)
def test_fractional_int_arguments_are_not_advised_to_be_truncated(call, words):
    """A fractional value is refused as not a whole number, never answered with int(...)."""
    with pytest.raises(TypeError) as info:
        call()
    message = str(info.value)
    assert "int(" not in message and "pass " not in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_whole_float_int_arguments_are_told_the_int_to_pass():
    with pytest.raises(TypeError, match=r"scale_factor must be an int, got float 2\.0 \(pass 2\)"):
        carafe_cupy.carafe(F, M, 3, 2, 2.0)


G = torch.ones(1, 4, 6, 6)

BACKWARD_CASES = [
    # (grad_output, features, masks, k, G, s, error type, words the message must contain)
    (torch.ones(1, 4, 5, 5), F, M, 3, 2, 2, ValueError, ["grad_output", "(1, 4, 6, 6)", "5, 5"]),
    (G[0], F, M, 3, 2, 2, ValueError, ["grad_output", "(1, 4, 6, 6)", "(4, 6, 6)"]),
    (G.int(), F, M, 3, 2, 2, TypeError, ["grad_output", "floating", "int32"]),
    (G.bool(), F, M, 3, 2, 2, TypeError, ["grad_output", "floating", "bool"]),
    (G.to("meta"), F, M, 3, 2, 2, ValueError, ["device", "grad_output on meta"]),
    (G.numpy(), F, M, 3, 2, 2, TypeError, ["grad_output", "torch.Tensor", "numpy.ndarray"]),
    (None, F, M, 3, 2, 2, TypeError, ["grad_output", "torch.Tensor", "NoneType"]),
    (G, F, M, 4, 2, 2, ValueError, ["kernel_size", "odd"]),
    (G, F, M, 3, 2, 2.0, TypeError, ["scale_factor", "int", "2.0"]),
    (G, F, M[:, :9], 3, 2, 2, ValueError, ["masks", "(1, 18, 6, 6)"]),
]


def _cpu_snapshot(values):
    return [
        x.clone() if isinstance(x, torch.Tensor) and x.device.type == "cpu" else None
        for x in values
    ]


def _assert_unchanged(snapshot, values):
    for before, after in zip(snapshot, values):
        if before is not None:
            assert torch.equal(before, after), "input was modified"


@pytest.mark.parametrize("case", BACKWARD_CASES, ids=lambda case: " ".join(case[-1])[:40])
def test_backward_bad_input_raises_clear_error(case):
    *tensors, k, g, s, error, words = case
    snapshot = _cpu_snapshot(tensors)
    with pytest.raises(error) as info:
        carafe_cupy.carafe_backward(*tensors, k, g, s)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"
    _assert_unchanged(snapshot, tensors)


def test_backward_of_tensors_that_require_grad_gives_plain_values():
    features = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    masks = torch.rand(1, 18, 6, 6, dtype=torch.float64, requires_grad=True)
    grad_output = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    grad_features, grad_masks = carafe_cupy.carafe_backward(grad_output, features, masks, 3, 2, 2)
    assert not grad_features.requires_grad and not grad_masks.requires_grad
    carafe_cupy.carafe(features, masks, 3, 2, 2).backward(grad_output)
    assert torch.equal(grad_features, features.grad)
    assert torch.equal(grad_masks, masks.grad)


def test_array_front_end_runs_torch_cpu_tensors_on_the_torch_path_without_the_simulator(
    monkeypatch,
):
    # torch tensors are DLPack arrays, so the array front end takes them; host memory
    # without the simulator runs on the PyTorch CPU path (tests/test_interop_dlpack_cpu.py)
    from carafe_cupy._array import api as _cupy_api

    monkeypatch.delenv("CARAFE_CUPY_SIMULATOR", raising=False)
    features, masks = good_inputs()
    torch.testing.assert_close(
        _cupy_api.carafe(features, masks, 3, 2, 2), carafe_cupy.carafe(features, masks, 3, 2, 2)
    )
    grads = _cupy_api.carafe_backward(G, features, masks, 3, 2, 2)
    for grad, want in zip(grads, carafe_cupy.carafe_backward(G, features, masks, 3, 2, 2)):
        torch.testing.assert_close(grad, want)


def test_index_range_check_is_exact():
    from carafe_cupy._core import validate as _validate

    # N*C*(H*s)*(W*s) == 2**63 - 1 exactly still fits; one more batch does not
    fits = _validate.check_geometry((1, _validate.INDEX_MAX, 1, 1), (1, 1, 1, 1), 1, 1, 1)
    assert fits.channels == _validate.INDEX_MAX
    with pytest.raises(ValueError, match=r"output would have N\*C"):
        _validate.check_geometry((2, _validate.INDEX_MAX, 1, 1), (2, 1, 1, 1), 1, 1, 1)
    # the masks can overflow on their own: G*k*k channels per pixel
    huge_kernel = 2**31 + 1
    with pytest.raises(ValueError, match=r"masks would have N\*G\*k\*k"):
        _validate.check_geometry((1, 1, 2, 2), (1, huge_kernel**2, 2, 2), huge_kernel, 1, 1)


@pytest.mark.skipif(
    not torch.cuda.is_available() or not carafe_cupy._runtime.cupy_runtime.cupy_importable(),
    reason="needs a CUDA GPU with CuPy",
)
@pytest.mark.gpu
def test_torch_and_cupy_inputs_are_not_mixed():
    import cupy

    features = torch.randn(1, 4, 3, 3, device="cuda")
    masks = cupy.random.rand(1, 18, 6, 6, dtype=cupy.float32)
    with pytest.raises(TypeError, match="all torch tensors or all cupy arrays.*masks is cupy"):
        carafe_cupy.carafe(features, masks, 3, 2, 2)
    with pytest.raises(TypeError, match="features is torch"):
        carafe_cupy.carafe_backward(cupy.ones((1, 4, 6, 6)), features, masks, 3, 2, 2)


def test_module_validates_at_construction():
    with pytest.raises(ValueError, match="kernel_size"):
        carafe_cupy.CARAFE(2, 1, 2)
    with pytest.raises(TypeError, match="scale_factor"):
        carafe_cupy.CARAFE(3, 1, 2.5)


def test_numpy_integer_arguments_are_accepted():
    features, masks = good_inputs()
    output = carafe_cupy.carafe(features, masks, np.int64(3), np.int32(2), np.int8(2))
    assert output.shape == (1, 4, 6, 6)
