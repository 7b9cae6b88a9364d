"""Property tests: random problems in every dtype and layout against an independent reference.

Profiles (tests/conftest.py): HYPOTHESIS_PROFILE=ci (default, derandomised,
bounded) or HYPOTHESIS_PROFILE=long (many fresh examples).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import carafe_cupy  # noqa: E402

from backends import BACKENDS  # noqa: E402
from cases import assert_matches, config_id, config_matrix, make_inputs  # noqa: E402
from gather_reference import gather_carafe, gather_carafe_backward  # noqa: E402
from naive import naive_carafe, naive_carafe_backward  # noqa: E402

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
LAYOUTS = ("contiguous", "strided", "channels_last")


@st.composite
def problems(draw):
    """(N, C, H, W, k, G, s), dtype, layout and a seed for the values."""
    group_size = draw(st.integers(1, 4))
    channels = group_size * draw(st.integers(1, 3))
    config = (
        draw(st.integers(0, 2)),
        channels,
        draw(st.integers(1, 12)),
        draw(st.integers(1, 12)),
        draw(st.sampled_from([1, 3, 5, 7, 9])),
        group_size,
        draw(st.integers(1, 4)),
    )
    return config, draw(st.sampled_from(sorted(DTYPES))), draw(st.sampled_from(LAYOUTS))


@st.composite
def reassembly_problems(draw):
    """A problem with a stride or a scale (never both) and a dilation:
    (N, C, H, W, k, G, s, t, d), dtype, layout."""
    (n, c, h, w, k, g, s), dtype, layout = draw(problems())
    stride = draw(st.integers(1, 3))
    scale = 1 if stride > 1 else s
    return (n, c, h, w, k, g, scale, stride, draw(st.integers(1, 3))), dtype, layout


def with_layout(values: np.ndarray, dtype: torch.dtype, layout: str, device: str):
    """A leaf tensor holding ``values`` in the requested memory layout."""
    tensor = torch.from_numpy(values).to(dtype=dtype, device=device)
    if layout == "channels_last":
        return tensor.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        # every other column of a wider buffer, and padding between planes
        n, c, h, w = tensor.shape
        buffer = torch.zeros((n, c, h + 1, 2 * w), dtype=dtype, device=device)
        buffer[:, :, :h, ::2] = tensor
        return buffer[:, :, :h, ::2]
    return tensor.contiguous()


def run_carafe(backend, features, masks, grad_output, params):
    """Output and both gradients (through autograd) on ``backend``, as float64 numpy.
    ``params``: (k, G, s) for carafe, (k, G, s, stride, dilation) for reassemble."""
    features = features.detach().requires_grad_()
    masks = masks.detach().requires_grad_()
    op = carafe_cupy.carafe if len(params) == 3 else carafe_cupy.reassemble
    with backend.active():
        output = op(features, masks, *params)
        output.backward(grad_output)
    return [t.detach().cpu().double().numpy() for t in (output, features.grad, masks.grad)]


def check_problem(backend, config, dtype, layout, seed, special_values=0):
    params = tuple(config[4:])
    arrays = list(make_inputs(config, seed))
    if special_values:
        rng = np.random.default_rng(seed + 1)
        for array in arrays:
            flat = array.reshape(-1)
            if flat.size:
                spots = rng.integers(0, flat.size, size=special_values)
                flat[spots] = rng.choice([np.nan, np.inf, -np.inf], size=special_values)
    features, masks, grad_output = (
        with_layout(array, DTYPES[dtype], layout, backend.device) for array in arrays
    )
    # the reference sees exactly the values the op sees (after rounding to dtype)
    f, m, go = (t.cpu().double().numpy() for t in (features, masks, grad_output))
    output, grad_features, grad_masks = run_carafe(backend, features, masks, grad_output, params)
    expected_grad_features, expected_grad_masks = gather_carafe_backward(go, f, m, *params)
    assert_matches(output, gather_carafe(f, m, *params), dtype, "output")
    assert_matches(grad_features, expected_grad_features, dtype, "grad_features")
    assert_matches(grad_masks, expected_grad_masks, dtype, "grad_masks")


# CARAFE problems, and reassembly with a stride or scale and a dilation
KINDS = {"carafe": problems(), "reassembly": reassembly_problems()}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS, ids=lambda backend: backend.name)
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_matches_reference(backend, kind, data, seed):
    check_problem(backend, *data.draw(KINDS[kind], label="problem"), seed)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS, ids=lambda backend: backend.name)
@given(data=st.data(), seed=st.integers(0, 2**16), special_values=st.integers(1, 6))
def test_nan_and_inf_propagate_like_the_reference(backend, kind, data, seed, special_values):
    check_problem(backend, *data.draw(KINDS[kind], label="problem"), seed, special_values)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda backend: backend.name)
def test_inf_mask_on_an_outside_tap_is_not_nan(backend):
    # tap (0, 0) of the top-left output reads above and left of the input:
    # it is skipped, so its Inf weight must not become Inf * 0 = NaN
    config = (1, 2, 3, 3, 3, 1, 1)
    features, masks, grad_output = make_inputs(config)
    masks[0, 0, 0, 0] = np.inf
    grad_output[0, 0, 0, 0] = np.inf
    for layout in LAYOUTS:
        arrays = (features, masks, grad_output)
        tensors = [with_layout(a, torch.float32, layout, backend.device) for a in arrays]
        output, _, grad_masks = run_carafe(backend, *tensors, (3, 1, 1))
        assert np.isfinite(output).all(), layout
        assert grad_masks[0, 0, 0, 0] == 0.0, layout


# every sixth CARAFE config, then the same shapes strided, dilated, and both
SPECIALS_CONFIGS = config_matrix()[::6]
SPECIALS_CONFIGS += [
    (*config[:6], 1, *window)
    for config, window in zip(SPECIALS_CONFIGS, [(2, 1), (1, 2), (3, 2), (2, 3)] * 3)
]


def specials_id(config) -> str:
    return config_id(config[:7]) + ("" if len(config) == 7 else "t{}d{}".format(*config[7:]))


@pytest.mark.parametrize("config", SPECIALS_CONFIGS, ids=specials_id)
def test_gather_reference_matches_naive(config):
    """The fast reference agrees with naive.py, NaN/Inf positions included."""
    params = config[4:]
    features, masks, grad_output = make_inputs(config, seed=7)
    rng = np.random.default_rng(3)
    for array in (features, masks, grad_output):
        flat = array.reshape(-1)
        if flat.size:
            flat[rng.integers(0, flat.size, size=2)] = [np.nan, np.inf]
    with np.errstate(invalid="ignore"):  # naive.py computes Inf - Inf on purpose here
        expected_output = naive_carafe(features, masks, *params)
        expected_grads = naive_carafe_backward(grad_output, features, masks, *params)
    assert_matches(gather_carafe(features, masks, *params), expected_output, "float64", "output")
    for actual, expected, what in zip(
        gather_carafe_backward(grad_output, features, masks, *params),
        expected_grads,
        ("grad_features", "grad_masks"),
    ):
        assert_matches(actual, expected, "float64", what)
