"""Edges of the arguments: zero channels, a grad_output wrong in one size only, and the
modules' own checks at their limits (CARAFEPack's up_group, Involution's
reduction_ratio equal to channels)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402
from carafe_cupy import arrays  # noqa: E402

HAS_COMPILER = shutil.which("g++") is not None or shutil.which("c++") is not None
BACKENDS = [
    "cpu",
    pytest.param(
        "simulator",
        marks=pytest.mark.skipif(not HAS_COMPILER, reason="the simulator needs g++ or c++"),
    ),
]
K, G, S = 3, 2, 2


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    if request.param == "simulator":
        monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    else:
        monkeypatch.delenv("CARAFE_CUPY_SIMULATOR", raising=False)
    return request.param


# ---------------------------------------------------------------- zero channels


def zero_channel_calls(features, masks, logits, grad_output):
    return {
        "carafe": lambda: carafe_cupy.carafe(features, masks, K, 1, S),
        "reassemble": lambda: carafe_cupy.reassemble(features, masks, K, 1, S),
        "carafe_backward": lambda: carafe_cupy.carafe_backward(
            grad_output, features, masks, K, 1, S
        ),
        "carafe_from_logits": lambda: carafe_cupy.carafe_from_logits(features, logits, K, 1, S),
        "the op": lambda: torch.ops.carafe_cupy.carafe_forward(features, masks, K, 1, S),
    }


@pytest.mark.parametrize(
    "call", ["carafe", "reassemble", "carafe_backward", "carafe_from_logits", "the op"]
)
def test_zero_channels_are_refused_naming_features_and_c(backend, call):
    """C = 0 is refused (N = 0 is an empty batch, and is run): the message names the
    features' channel count, not the group size that 'divides' it."""
    features = torch.randn(1, 0, 3, 3)
    masks = torch.rand(1, K * K, 6, 6)
    logits = torch.randn(1, K * K * S * S, 3, 3)
    grad_output = torch.randn(1, 0, 6, 6)
    with pytest.raises(ValueError, match=r"features must have C >= 1 channels.*\(1, 0, 3, 3\)"):
        zero_channel_calls(features, masks, logits, grad_output)[call]()


def test_zero_channel_arrays_are_refused_naming_features_and_c(monkeypatch):
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    features = np.zeros((1, 0, 3, 3), np.float32)
    masks = np.zeros((1, K * K, 6, 6), np.float32)
    with pytest.raises(ValueError, match="carafe: features must have C >= 1 channels"):
        arrays.carafe(features, masks, K, 1, S)
    with pytest.raises(ValueError, match="carafe_backward: features must have C >= 1"):
        arrays.carafe_backward(np.zeros((1, 0, 6, 6), np.float32), features, masks, K, 1, S)


def test_an_empty_batch_still_runs(backend):
    features = torch.randn(0, 4, 3, 3, requires_grad=True)
    masks = torch.rand(0, G * K * K, 6, 6, requires_grad=True)
    output = carafe_cupy.carafe(features, masks, K, G, S)
    assert output.shape == (0, 4, 6, 6)
    output.sum().backward()
    assert features.grad.shape == features.shape and masks.grad.shape == masks.shape


# ---------------------------------------------------------------- grad_output sizes

OUTPUT = (2, 4, 6, 10)  # features (2, 4, 3, 5) at s = 2


def wrong_in(axis):
    shape = list(OUTPUT)
    shape[axis] += 1
    return tuple(shape)


AXES = {"batch": 0, "channels": 1, "height": 2, "width": 3}


def torch_inputs():
    features = torch.randn(2, 4, 3, 5)
    masks = torch.rand(2, G * K * K, 6, 10)
    logits = torch.randn(2, G * K * K * S * S, 3, 5)
    return features, masks, logits


@pytest.mark.parametrize("axis", AXES.values(), ids=list(AXES))
def test_a_grad_output_wrong_in_one_size_is_refused(backend, axis):
    features, masks, logits = torch_inputs()
    grad_output = torch.randn(wrong_in(axis))
    calls = {
        "carafe_backward": lambda: carafe_cupy.carafe_backward(
            grad_output, features, masks, K, G, S
        ),
        "reassemble_backward": lambda: carafe_cupy.reassemble_backward(
            grad_output, features, masks, K, G, S
        ),
        "carafe_backward op": lambda: torch.ops.carafe_cupy.carafe_backward(
            grad_output, features, masks, K, G, S
        ),
        "carafe_fused_backward op": lambda: torch.ops.carafe_cupy.carafe_fused_backward(
            grad_output, features, logits, K, G, S
        ),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="grad_output must have the output's shape") as info:
            call()
        assert f"(2, 4, 6, 10), got {wrong_in(axis)}" in str(info.value), name


@pytest.mark.parametrize("axis", AXES.values(), ids=list(AXES))
def test_a_grad_output_array_wrong_in_one_size_is_refused(monkeypatch, axis):
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    features, masks, _ = (x.numpy() for x in torch_inputs())
    grad_output = np.zeros(wrong_in(axis), np.float32)
    with pytest.raises(ValueError, match="carafe_backward: grad_output must have") as info:
        arrays.carafe_backward(grad_output, features, masks, K, G, S)
    assert f"(2, 4, 6, 10), got {wrong_in(axis)}" in str(info.value)


def test_a_strided_grad_output_wrong_in_width_is_refused(backend):
    features, kernels = torch.randn(1, 4, 7, 5), torch.rand(1, G * K * K, 4, 3)
    with pytest.raises(ValueError, match=r"\(1, 4, 4, 3\), got \(1, 4, 4, 4\)"):
        carafe_cupy.reassemble_backward(torch.randn(1, 4, 4, 4), features, kernels, K, G, 1, 2)


@pytest.mark.parametrize("axis", AXES.values(), ids=list(AXES))
def test_masks_wrong_in_one_size_are_refused(backend, axis):
    features, masks, _ = torch_inputs()
    shape = list(masks.shape)
    shape[axis] += 1
    with pytest.raises(ValueError, match="masks must have shape") as info:
        carafe_cupy.carafe(features, torch.rand(shape), K, G, S)
    assert "(2, 18, 6, 10) for features (2, 4, 3, 5)" in str(info.value)
    assert f"got {tuple(shape)}" in str(info.value)


@pytest.mark.parametrize("shape", [(1, 4, 3, 0), (1, 4, 0, 3), (1, 4, 0, 0)])
def test_empty_planes_are_refused(backend, shape):
    n, c, h, w = shape
    masks = torch.rand(n, K * K, h * S, w * S)
    with pytest.raises(ValueError, match=r"features must have H, W >= 1"):
        carafe_cupy.carafe(torch.randn(shape), masks, K, 1, S)


def test_an_output_of_2_to_the_63_elements_is_refused():
    """One element past what signed 64-bit indices address (meta tensors: no memory)."""
    features = torch.empty(1, 2**21, 2**20, 2**20, device="meta", dtype=torch.float16)
    masks = torch.empty(1, 1, 2**21, 2**21, device="meta", dtype=torch.float16)
    with pytest.raises(ValueError, match=r"the output would have .* = 9223372036854775808 "):
        carafe_cupy.carafe(features, masks, 1, 1, 2)


# ---------------------------------------------------------------- the modules' own checks


@pytest.mark.parametrize(
    "channels, scale, up_kernel, up_group",
    [(6, 2, 5, 3), (8, 4, 3, 2), (5, 2, 3, 5), (12, 3, 5, 4)],
)
def test_carafepack_takes_any_up_group_dividing_channels(channels, scale, up_kernel, up_group):
    pack = carafe_cupy.CARAFEPack(
        channels, scale, up_kernel=up_kernel, up_group=up_group, compressed_channels=4
    )
    assert pack.content_encoder.out_channels == up_kernel**2 * up_group * scale**2
    with torch.no_grad():
        assert pack(torch.randn(1, channels, 3, 2)).shape == (1, channels, 3 * scale, 2 * scale)


@pytest.mark.parametrize(
    "channels, scale, up_kernel, up_group", [(6, 2, 5, 4), (8, 4, 3, 3), (9, 3, 3, 2)]
)
def test_carafepack_refuses_an_up_group_not_dividing_channels(channels, scale, up_kernel, up_group):
    """Refused when the module is built, naming up_group, not at its first call."""
    with pytest.raises(ValueError) as info:
        carafe_cupy.CARAFEPack(channels, scale, up_kernel=up_kernel, up_group=up_group)
    assert str(info.value) == (
        f"CARAFEPack: up_group ({up_group}) must divide channels ({channels})"
    )


@pytest.mark.parametrize("channels, group_channels", [(8, 4), (4, 4), (3, 1)])
def test_involution_reduction_ratio_may_equal_channels(channels, group_channels):
    """The reduction then keeps one channel, the least it may."""
    module = carafe_cupy.Involution(
        channels, 3, group_channels=group_channels, reduction_ratio=channels
    ).eval()
    assert module.conv1.conv.out_channels == 1
    assert module.conv2.conv.in_channels == 1
    with torch.no_grad():
        assert module(torch.randn(1, channels, 4, 5)).shape == (1, channels, 4, 5)
    with pytest.raises(ValueError, match=rf"reduction_ratio \({channels + 1}\) must be at most"):
        carafe_cupy.Involution(
            channels, 3, group_channels=group_channels, reduction_ratio=channels + 1
        )
