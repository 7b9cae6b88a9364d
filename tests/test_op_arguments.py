"""Raw ``torch.ops.carafe_cupy`` calls check each tensor's dtype and device.

A kernel is chosen from one tensor's dtype and reads the others as that type, so a raw
call with float64 features and float32 masks would read the masks past their end. Each op
(forward, backward and the fused pair) refuses such a call with an error that names the
argument, what it must be and what it is: on the CPU path, on the simulator (the real
kernels' launch path) and in the fake implementations that torch.compile traces.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import carafe_cupy._torch.fused  # noqa: E402,F401 (registers the ops)

OPS = torch.ops.carafe_cupy
K, G, S = 3, 1, 2


def inputs(dtype=torch.float32, **dtypes):
    """features (1, 2, 3, 3), masks (1, 9, 6, 6), logits (1, 36, 3, 3), grad_output
    (1, 2, 6, 6); ``dtypes`` overrides one tensor's dtype."""
    shapes = {
        "features": (1, 2, 3, 3),
        "masks": (1, K * K * G, 6, 6),
        "logits": (1, G * K * K * S * S, 3, 3),
        "grad_output": (1, 2, 6, 6),
    }
    return {name: torch.rand(shape).to(dtypes.get(name, dtype)) for name, shape in shapes.items()}


CALLS = {
    "carafe_forward": lambda t: OPS.carafe_forward(t["features"], t["masks"], K, G, S),
    "carafe_backward": lambda t: OPS.carafe_backward(
        t["grad_output"], t["features"], t["masks"], K, G, S
    ),
    "carafe_fused_forward": lambda t: OPS.carafe_fused_forward(t["features"], t["logits"], K, G, S),
    "carafe_fused_backward": lambda t: OPS.carafe_fused_backward(
        t["grad_output"], t["features"], t["logits"], K, G, S
    ),
}
# (op, the tensor given another dtype)
MIXED = [
    ("carafe_forward", "masks"),
    ("carafe_backward", "masks"),
    ("carafe_backward", "grad_output"),
    ("carafe_fused_forward", "logits"),
    ("carafe_fused_backward", "logits"),
    ("carafe_fused_backward", "grad_output"),
]


@pytest.fixture(params=["cpu", "simulator"])
def path(request, monkeypatch):
    if request.param == "simulator":
        monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    else:
        monkeypatch.delenv("CARAFE_CUPY_SIMULATOR", raising=False)
    return request.param


@pytest.mark.parametrize("op, name", MIXED)
def test_a_tensor_of_another_dtype_is_refused(path, op, name):
    tensors = inputs(torch.float64, **{name: torch.float32})
    message = (
        rf"carafe_cupy::{op}: {name} must have the dtype of features, torch\.float64, "
        r"got torch\.float32"
    )
    with pytest.raises(TypeError, match=message):
        CALLS[op](tensors)


@pytest.mark.parametrize("op", CALLS)
def test_features_of_a_non_floating_dtype_are_refused(path, op):
    tensors = inputs(torch.int32)
    with pytest.raises(TypeError, match=rf"carafe_cupy::{op}: features must have a floating"):
        CALLS[op](tensors)


@pytest.mark.parametrize("op, name", MIXED)
def test_a_tensor_on_another_device_is_refused(path, op, name):
    tensors = inputs()
    tensors[name] = tensors[name].to("meta")
    message = rf"carafe_cupy::{op}: {name} must be on the device of features, cpu, got meta"
    with pytest.raises(ValueError, match=message):
        CALLS[op](tensors)


@pytest.mark.parametrize("op, name", MIXED)
def test_the_fake_implementations_refuse_them_too(op, name):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        tensors = inputs(torch.float64, **{name: torch.float16})
        with pytest.raises(TypeError, match=rf"{name} must have the dtype of features"):
            CALLS[op](tensors)


@pytest.mark.parametrize("op", CALLS)
def test_matching_tensors_still_run(path, op):
    results = CALLS[op](inputs(torch.float64))
    for result in results if isinstance(results, tuple) else (results,):
        assert result.dtype == torch.float64 and torch.isfinite(result).all()
