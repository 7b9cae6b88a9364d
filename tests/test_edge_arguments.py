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


@pytest.mark.parametrize("group_size", [2, 3])
def test_zero_channels_are_refused_as_such_whatever_the_group_size(backend, group_size):
    """0 is divisible by every G, but the message must still blame C, not G."""
    features = torch.randn(1, 0, 3, 3)
    masks = torch.rand(1, group_size * K * K, 6, 6)
    with pytest.raises(ValueError, match=r"features must have C >= 1 channels") as info:
        carafe_cupy.carafe(features, masks, K, group_size, S)
    assert "group_size" not in str(info.value)


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


@pytest.mark.parametrize("axis", AXES.values(), ids=list(AXES))
def test_a_wrong_logits_shape_is_reported_as_the_logits(backend, axis):
    """carafe_from_logits never saw masks: a wrong logits size names the logits and
    their expected shape (N, G*k*k*s*s, H, W), not the masks made from them."""
    features, _, logits = torch_inputs()
    shape = list(logits.shape)
    shape[axis] += 1
    calls = {
        "carafe_from_logits": carafe_cupy.carafe_from_logits,
        "the fused op": torch.ops.carafe_cupy.carafe_fused_forward,
    }
    for name, call in calls.items():
        with pytest.raises(ValueError) as info:
            call(features, torch.randn(shape), K, G, S)
        message = str(info.value)
        assert message == (
            "carafe_from_logits: logits must have shape (N, G*k*k*s*s, H, W) = "
            f"(2, {G * K * K * S * S}, 3, 5) for features (2, 4, 3, 5), kernel_size={K}, "
            f"group_size={G}, scale_factor={S}; got {tuple(shape)}"
        ), name


def test_logits_of_another_rank_are_reported_as_the_logits(backend):
    features, _, logits = torch_inputs()
    with pytest.raises(ValueError, match=r"logits must be 4-D .* got 3-D shape \(2, 72, 3\)"):
        carafe_cupy.carafe_from_logits(features, logits[..., 0], K, G, S)


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


# ---------------------------------------------------------------- byte strides


def layout_inputs(seed=0):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((1, 4, 3, 5)).astype(np.float32)
    masks = rng.random((1, G * K * K, 6, 10)).astype(np.float32)
    grad_output = rng.standard_normal((1, 4, 6, 10)).astype(np.float32)
    return features, masks, grad_output


def packed_field(array):
    """``array`` as the float32 field of a packed 5-byte record: every stride is a
    multiple of 5 bytes, and the data start 1 byte into the buffer."""
    records = np.zeros(array.size, dtype=[("tag", "u1"), ("value", "<f4")])
    records["value"] = array.ravel()
    return records["value"].reshape(array.shape)


def strided_view(shape, byte_strides, offset_bytes=0):
    """A float32 array with exactly these byte strides, over a zeroed buffer just
    large enough for every element it names (negative strides included)."""
    low = sum(min(0, stride * (size - 1)) for stride, size in zip(byte_strides, shape))
    high = sum(max(0, stride * (size - 1)) for stride, size in zip(byte_strides, shape))
    buffer = np.zeros(offset_bytes + high - low + 4, np.uint8)
    return np.ndarray(
        shape, np.float32, buffer=buffer, offset=offset_bytes - low, strides=byte_strides
    )


UNEVEN = {
    "a packed record field": lambda shape: packed_field(np.ones(shape, np.float32)),
    "a 6-byte stride": lambda shape: strided_view(shape, (6 * 60, 6 * 20, 6 * 4, 6)),
    "a -6-byte stride": lambda shape: strided_view(shape, (6 * 60, 6 * 20, 6 * 4, -6)),
    "a misaligned start": lambda shape: strided_view(
        shape, tuple(np.ones(shape, np.float32).strides), offset_bytes=2
    ),
}


# numpy arrays go to the simulated kernels, or without the simulator to the PyTorch path
ROUTES = {"simulator": "1", "torch": "0"}


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("layout", list(UNEVEN))
@pytest.mark.parametrize("argument", ["features", "masks", "grad_output"])
def test_arrays_the_kernels_cannot_index_are_refused_naming_them(
    monkeypatch, route, layout, argument
):
    """Byte strides that are not whole elements (or a start between elements) would
    be read at the wrong addresses: refused, before anything is read."""
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", ROUTES[route])
    inputs = dict(zip(("features", "masks", "grad_output"), layout_inputs()))
    inputs[argument] = UNEVEN[layout](inputs[argument].shape)
    features, masks, grad_output = inputs.values()

    def refused(where, name):
        problem = r"(has byte strides .* not all multiples|starts \d bytes past a multiple)"
        return pytest.raises(
            TypeError,
            match=rf"^{where}: {name} {problem} of its 4-byte float32 elements; "
            rf"pass numpy\.ascontiguousarray\({name}\) instead$",
        )

    with refused("carafe_backward", argument):
        arrays.carafe_backward(grad_output, features, masks, K, G, S)
    if argument != "grad_output":
        with refused("carafe", argument):
            arrays.carafe(features, masks, K, G, S)
        with refused("reassemble", argument.replace("masks", "kernels")):
            arrays.reassemble(features, masks, K, G, S)


def reversed_view(array, axes):
    """``array``'s values, held in reverse along ``axes``: negative strides."""
    flip = tuple(slice(None, None, -1) if axis in axes else slice(None) for axis in range(4))
    return np.ascontiguousarray(array[flip])[flip]


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("axes", [(3,), (2, 3), (0, 1, 2, 3)], ids=str)
def test_negative_whole_element_strides_give_the_contiguous_results(monkeypatch, route, axes):
    """The kernels read them in place; torch, which has none, gets a forward copy."""
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", ROUTES[route])
    features, masks, grad_output = layout_inputs()
    flipped = [reversed_view(array, axes) for array in (features, masks, grad_output)]
    assert all(min(array.strides) < 0 for array in flipped)
    np.testing.assert_array_equal(
        arrays.carafe(flipped[0], flipped[1], K, G, S), arrays.carafe(features, masks, K, G, S)
    )
    got = arrays.carafe_backward(flipped[2], flipped[0], flipped[1], K, G, S)
    expected = arrays.carafe_backward(grad_output, features, masks, K, G, S)
    for got_gradient, expected_gradient in zip(got, expected):
        np.testing.assert_array_equal(got_gradient, expected_gradient)


GUARDED_READS = """
import ctypes, mmap, os, sys
import numpy as np
import carafe_cupy
from carafe_cupy import arrays

PAGE = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
keep = []

def guarded(values):
    # values in pages of their own, with an unreadable page on either side
    size = values.nbytes
    pages = -(-size // PAGE)
    region = mmap.mmap(-1, (pages + 2) * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    for page in (0, pages + 1):
        assert libc.mprotect(base + page * PAGE, PAGE, 0) == 0, ctypes.get_errno()
    start = (pages + 1) * PAGE - size  # flush against the upper guard
    array = np.frombuffer(region, values.dtype, values.size, start).reshape(values.shape)
    keep.append(region)
    return array

def flipped(values):
    # held reversed in a guarded buffer, viewed forward: every stride negative
    array = guarded(np.zeros_like(values))
    array[...] = values[::-1, ::-1, ::-1, ::-1]
    return array[::-1, ::-1, ::-1, ::-1]

rng = np.random.default_rng(0)
features = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
masks = rng.random((1, 18, 32, 32)).astype(np.float32)
grad_output = rng.standard_normal((1, 4, 32, 32)).astype(np.float32)
inputs = [flipped(a) for a in (features, masks, grad_output)]
assert all(min(a.strides) < 0 for a in inputs)
output = carafe_cupy.carafe(inputs[0], inputs[1], 3, 2, 2)
grads = carafe_cupy.carafe_backward(inputs[2], inputs[0], inputs[1], 3, 2, 2)
os.environ["CARAFE_CUPY_SIMULATOR"] = "1"
expected = arrays.carafe(features, masks, 3, 2, 2)
np.testing.assert_allclose(output, expected, rtol=1e-6, atol=1e-6)
for got, want in zip(grads, arrays.carafe_backward(grad_output, features, masks, 3, 2, 2)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
print("read")
"""


@pytest.mark.parametrize("route", list(ROUTES))
def test_negative_strides_never_read_outside_their_buffer(route):
    """Arrays with every stride negative, flush against unreadable pages on both
    sides (a stray read is a segfault), are read correctly on both routes (the
    torch route once aborted the process in torch.from_dlpack). In a child
    process, so that a crash fails the test instead of the run."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CARAFE_CUPY_SIMULATOR": ROUTES[route]}
    child = subprocess.run(
        [sys.executable, "-c", GUARDED_READS], env=env, capture_output=True, text=True
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert child.stdout.strip() == "read"


@pytest.mark.parametrize("route", list(ROUTES))
def test_size_one_axes_may_have_any_stride(monkeypatch, route):
    """An axis of size 1 is never stepped along, so its stride is never used."""
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", ROUTES[route])
    features, masks, _ = layout_inputs()
    odd = strided_view(features.shape, (3, *features.strides[1:]))
    odd[...] = features
    np.testing.assert_array_equal(
        arrays.carafe(odd, masks, K, G, S), arrays.carafe(features, masks, K, G, S)
    )


def test_negative_strides_can_be_refused_for_a_consumer_without_them():
    """torch has no negative strides (its from_dlpack aborts the process on one):
    the check the torch route takes refuses them, naming the argument."""
    from carafe_cupy._array import refs

    features = reversed_view(layout_inputs()[0], (3,))
    refs.check_layout("carafe", "features", features)  # the kernels read them correctly
    with pytest.raises(TypeError, match=r"carafe: features has negative byte strides"):
        refs.check_layout("carafe", "features", features, negative_strides=False)
