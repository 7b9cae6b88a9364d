"""The configuration matrix shared by the CPU, simulator and GPU tests."""

from __future__ import annotations

import functools
import itertools

import numpy as np

KERNEL_SIZES = (1, 3, 5, 7)
GROUP_SIZES = (1, 2, 4)
SCALE_FACTORS = (1, 2, 3, 4)
# (H, W): square, non-square, and smaller than the kernel
SPATIAL = ((3, 3), (2, 5), (4, 1), (5, 3))

# Relative tolerance against the float64 naive reference, per storage dtype.
TOLERANCE = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-2, "bfloat16": 3e-2}


def torch_dtypes() -> dict:
    """Storage dtype name -> torch dtype, for every dtype the kernels support."""
    import torch

    return {name: getattr(torch, name) for name in TOLERANCE}


def config_matrix() -> list[tuple[int, int, int, int, int, int, int]]:
    """(N, C, H, W, k, G, s) covering every k x G x s with varied shapes and N in {0, 1, 2}."""
    configs = []
    for index, (k, g, s) in enumerate(itertools.product(KERNEL_SIZES, GROUP_SIZES, SCALE_FACTORS)):
        h, w = SPATIAL[index % len(SPATIAL)]
        # N cycles along the diagonal: every s (and every k x G) meets N = 0 once
        # and N >= 1 otherwise, so no scale factor is tested only on empty batches
        n = (1, 2, 1, 0)[(index + index // len(SCALE_FACTORS)) % 4]
        c = g * (1 + index % 3)
        configs.append((n, c, h, w, k, g, s))
    return configs


def config_id(config) -> str:
    n, c, h, w, k, g, s = config
    return f"N{n}C{c}_{h}x{w}_k{k}G{g}s{s}"


def output_size(config) -> tuple[int, int]:
    """(Ho, Wo) of a config (N, C, H, W, k, G, s), or (..., s, stride, dilation)."""
    _, _, h, w, _, _, s, *more = config
    t = more[0] if more else 1
    return -(-h // t) * s, -(-w // t) * s


def make_inputs(config, seed: int = 0):
    """float64 numpy features, masks and grad_output for one configuration
    (N, C, H, W, k, G, s), or with stride and dilation after s."""
    n, c, h, w, k, g = config[:6]
    out_h, out_w = output_size(config)
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n, c, h, w))
    masks = rng.random((n, g * k * k, out_h, out_w))
    grad_output = rng.standard_normal((n, c, out_h, out_w))
    return features, masks, grad_output


def assert_close(actual, expected, dtype: str, what: str) -> None:
    actual = np.asarray(actual, dtype=np.float64)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    error = float(np.abs(actual - expected).max(initial=0.0)) / scale
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert error <= TOLERANCE[dtype], f"{what} ({dtype}): relative error {error:.3g}"


def make_exact_inputs(config, seed: int = 0):
    """Inputs on a coarse dyadic grid: exact in every storage dtype, so one float64
    reference serves float64, float32, float16 and bfloat16 alike. ``config`` is
    (N, C, H, W, k, G, s), or with stride and dilation after s."""
    n, c, h, w, k, g = config[:6]
    out_h, out_w = output_size(config)
    rng = np.random.default_rng(seed)
    features = rng.integers(-64, 65, (n, c, h, w)) / 32.0
    masks = rng.integers(0, 65, (n, g * k * k, out_h, out_w)) / 64.0
    grad_output = rng.integers(-64, 65, (n, c, out_h, out_w)) / 32.0
    return features, masks, grad_output


@functools.cache
def exact_expected(config):
    """Naive float64 (output, grad_features, grad_masks) for make_exact_inputs(config)."""
    from naive import naive_carafe, naive_carafe_backward

    *_, k, g, s = config
    features, masks, grad_output = make_exact_inputs(config)
    output = naive_carafe(features, masks, k, g, s)
    return output, *naive_carafe_backward(grad_output, features, masks, k, g, s)


def assert_matches(actual: np.ndarray, expected: np.ndarray, dtype: str, what: str) -> None:
    """Same NaN / +Inf / -Inf positions, and the finite values within the dtype's tolerance."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    for name, predicate in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        mismatch = predicate(actual) != predicate(expected)
        assert not mismatch.any(), (
            f"{what} ({dtype}): {name} positions differ at {np.argwhere(mismatch)[:5].tolist()}"
        )
    finite = np.isfinite(expected)
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    error = float(np.abs(actual[finite] - expected[finite]).max(initial=0.0)) / scale
    assert error <= TOLERANCE[dtype], f"{what} ({dtype}): relative error {error:.3g}"
