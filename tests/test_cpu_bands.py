"""The CPU path split into row bands over worker threads: same answers, any thread count."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import carafe_cupy
from carafe_cupy._cpu import bands as _cpu_bands

from gather_reference import gather_carafe, gather_carafe_backward

# (N, C, H, W, k, G, s): odd heights so the last band is short; k=7 needs bands >= 6 rows
CONFIGS = [(2, 8, 23, 9, 5, 2, 2), (1, 6, 29, 7, 7, 3, 3), (2, 4, 13, 5, 3, 1, 1)]


@pytest.fixture
def many_bands(monkeypatch):
    """Bands of a few rows even on small tensors, and two threads."""
    monkeypatch.setattr(_cpu_bands, "MIN_BAND_ELEMENTS", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _run(config, seed=0):
    n, c, h, w, k, g, s = config
    rng = np.random.default_rng(seed)
    features = torch.from_numpy(rng.standard_normal((n, c, h, w))).requires_grad_()
    masks = torch.from_numpy(rng.random((n, g * k * k, h * s, w * s))).requires_grad_()
    grad_output = torch.from_numpy(rng.standard_normal((n, c, h * s, w * s)))
    output = carafe_cupy.carafe(features, masks, k, g, s)
    output.backward(grad_output)
    return (features, masks, grad_output), (output, features.grad, masks.grad)


def test_row_bands_cover_the_height_with_equal_bands():
    for height in (1, 5, 16, 17, 100):
        for min_rows in (1, 4, 6):
            bands = _cpu_bands.row_bands(height, min_rows, 1, max_elements=3)
            assert bands[0][0] == 0 and bands[-1][1] == height
            assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))
            heights = {bottom - top for top, bottom in bands[:-1]}
            assert len(heights) <= 1 and all(rows >= min_rows for rows in heights)


@pytest.mark.parametrize("config", CONFIGS)
def test_banded_path_matches_the_gather_reference(config, many_bands):
    n, c, h, w, k, g, s = config
    bands = _cpu_bands.row_bands(h, k - 1, 1)
    assert len(bands) > 2, "the test must exercise several bands"
    (features, masks, grad_output), (output, grad_features, grad_masks) = _run(config)
    arrays = [t.detach().numpy() for t in (features, masks, grad_output)]
    expected_out = gather_carafe(arrays[0], arrays[1], k, g, s)
    expected_gf, expected_gm = gather_carafe_backward(arrays[2], arrays[0], arrays[1], k, g, s)
    np.testing.assert_allclose(output.detach().numpy(), expected_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad_features.numpy(), expected_gf, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad_masks.numpy(), expected_gm, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("config", CONFIGS)
def test_results_do_not_depend_on_the_thread_count(config, monkeypatch):
    monkeypatch.setattr(_cpu_bands, "MIN_BAND_ELEMENTS", 1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, serial = _run(config)
        torch.set_num_threads(2)
        _, parallel = _run(config)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(serial, parallel):
        assert torch.equal(a, b)


def test_workers_leave_the_callers_thread_count_alone(many_bands):
    _run(CONFIGS[0])
    assert torch.get_num_threads() == 2
    seen = []
    worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    assert seen and seen[0] >= 1


def test_a_failing_band_raises_in_the_caller():
    def work(band):
        if band[0] > 0:
            raise RuntimeError(f"band {band} failed")

    with pytest.raises(RuntimeError, match="failed"):
        _cpu_bands.run_bands(work, [(0, 1), (1, 2), (2, 3)], workers=2)


def test_workers_run_in_the_callers_grad_mode(many_bands):
    """The op runs under no_grad; workers must too, even for inputs that require grad."""
    features = torch.randn(1, 4, 23, 6).to(memory_format=torch.channels_last).requires_grad_()
    masks = torch.rand(1, 25, 46, 12, requires_grad=True)
    for _ in range(5):
        output = carafe_cupy.carafe(features, masks, 5, 1, 2)
        output.sum().backward()
    assert output.is_contiguous(memory_format=torch.channels_last)


def test_workers_run_under_the_callers_inference_mode(many_bands):
    features, masks = torch.randn(1, 4, 23, 6), torch.rand(1, 25, 46, 12)
    expected = carafe_cupy.carafe(features, masks, 5, 1, 2)
    with torch.inference_mode():
        output = carafe_cupy.carafe(features, masks, 5, 1, 2)
    assert torch.equal(output, expected)


def test_a_forked_child_gets_its_own_workers(many_bands):
    import multiprocessing

    features, masks = torch.randn(1, 4, 23, 6), torch.rand(1, 25, 46, 12)
    expected = carafe_cupy.carafe(features, masks, 5, 1, 2)  # the pool exists from here
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        output = pool.apply_async(carafe_cupy.carafe, (features, masks, 5, 1, 2)).get(120)
    assert torch.equal(output, expected)
