"""Tracing the real CARAFE kernels through the real launch code."""

from __future__ import annotations

import numpy as np
import pytest

import carafe_cupy
from carafe_cupy._plan import planner as _planner
from carafe_cupy._sim.trace import AccessStats, LaunchTrace, tracing

N, C, H, W, K, G, S = 2, 8, 10, 12, 5, 2, 2


@pytest.fixture
def inputs(monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    rng = np.random.default_rng(3)
    features = rng.standard_normal((N, C, H, W), dtype=np.float32)
    masks = rng.random((N, G * K * K, H * S, W * S), dtype=np.float32)
    grad_output = rng.standard_normal((N, C, H * S, W * S), dtype=np.float32)
    return features, masks, grad_output


def needed_mask_bytes(itemsize: int) -> int:
    """Bytes of the mask elements whose tap lies inside the image (the others multiply zero)."""
    r = (K - 1) // 2
    rows, cols = np.arange(H * S) // S, np.arange(W * S) // S
    inside = sum(
        int(((rows + i - r >= 0) & (rows + i - r < H)).sum())
        * int(((cols + j - r >= 0) & (cols + j - r < W)).sum())
        for i in range(K)
        for j in range(K)
    )
    return N * G * inside * itemsize


def assert_sane(stats: AccessStats, shared: bool) -> None:
    if stats.requests == 0:
        assert stats.bytes == stats.sectors == stats.bank_conflicts == 0
        return
    assert 0 < stats.bytes_per_request <= 32 * 16
    if shared:
        assert 1 <= stats.sectors_per_request <= 32 * 4
        assert 0 <= stats.conflicts_per_request < stats.sectors_per_request
        assert stats.unique_bytes == 0
    else:
        assert 1 <= stats.sectors_per_request <= 32 * 2
        assert stats.bank_conflicts == 0
        assert 0 < stats.unique_bytes <= stats.bytes


def check(trace: LaunchTrace) -> None:
    assert trace.blocks_traced == trace.blocks_total == int(np.prod(trace.grid))
    assert_sane(trace.global_load, False)
    assert_sane(trace.global_store, False)
    assert_sane(trace.shared_load, True)
    assert_sane(trace.shared_store, True)
    assert trace.sites and all(site.frames for site in trace.sites)


def by_role(traces: list[LaunchTrace]) -> dict[str, LaunchTrace]:
    roles = {}
    for trace in traces:
        role = next(r for r in ("forward", "features", "masks") if r in trace.kernel)
        assert role not in roles, [t.kernel for t in traces]
        roles[role] = trace
    return roles


@pytest.mark.parametrize("variant", ["auto", "general"])
def test_unique_bytes_are_the_tensor_sizes(inputs, variant: str) -> None:
    features, masks, grad_output = inputs
    with _planner.forced_variant(variant):
        want = carafe_cupy.carafe(features, masks, K, G, S)
        want_grads = carafe_cupy.carafe_backward(grad_output, features, masks, K, G, S)
    with _planner.forced_variant(variant), tracing() as traces:
        output = carafe_cupy.carafe(features, masks, K, G, S)
        grad_features, grad_masks = carafe_cupy.carafe_backward(
            grad_output, features, masks, K, G, S
        )
    np.testing.assert_array_equal(output, want)
    np.testing.assert_array_equal(grad_features, want_grads[0])
    np.testing.assert_array_equal(grad_masks, want_grads[1])
    roles = by_role(traces)
    assert sorted(roles) == ["features", "forward", "masks"]
    if variant == "general":
        assert all(not t.shared_load.requests for t in traces)
    else:
        assert all(t.shared_load.requests and t.shared_store.requests for t in traces)

    forward, d_features, d_masks = roles["forward"], roles["features"], roles["masks"]
    needed = needed_mask_bytes(masks.itemsize)
    assert needed < masks.nbytes
    # Both forwards skip the masks of taps outside the image.
    assert forward.global_load.unique_bytes == features.nbytes + needed
    if variant == "general":
        assert d_features.global_load.unique_bytes == grad_output.nbytes + needed
    else:
        # The tiled grad_features skips outside taps per tile, not per pixel.
        loaded = d_features.global_load.unique_bytes - grad_output.nbytes
        assert needed <= loaded <= masks.nbytes
    assert forward.global_store.unique_bytes == forward.global_store.bytes == output.nbytes
    assert d_features.global_store.unique_bytes == grad_features.nbytes
    assert d_masks.global_load.unique_bytes == grad_output.nbytes + features.nbytes
    assert d_masks.global_store.unique_bytes == grad_masks.nbytes
    for trace in traces:
        check(trace)


def test_sampled_forward_scales_with_the_blocks_traced(inputs) -> None:
    features, masks, _ = inputs
    with tracing() as full:
        carafe_cupy.carafe(features, masks, K, G, S)
    with tracing(max_blocks=2) as sampled:
        output = carafe_cupy.carafe(features, masks, K, G, S)
    np.testing.assert_array_equal(output, carafe_cupy.carafe(features, masks, K, G, S))
    (whole,), (part,) = full, sampled
    assert part.blocks_total == whole.blocks_total > part.blocks_traced == 2
    assert 0 < part.global_store.bytes < whole.global_store.bytes
    assert part.shared_load.requests < whole.shared_load.requests


def test_sites_add_up_to_the_launch(inputs) -> None:
    features, masks, _ = inputs
    with tracing() as traces:
        carafe_cupy.carafe(features, masks, K, G, S)
    (trace,) = traces
    for space, direction in [("global", "load"), ("global", "store"), ("shared", "load")]:
        total = getattr(trace, f"{space}_{direction}")
        sites = [s for s in trace.sites if (s.space, s.direction) == (space, direction)]
        assert sum(s.requests for s in sites) == total.requests
        assert sum(s.bytes for s in sites) == total.bytes
        assert sum(s.sectors for s in sites) == total.sectors
        assert sum(s.bank_conflicts for s in sites) == total.bank_conflicts
        if space == "global":
            assert max(s.unique_bytes for s in sites) <= total.unique_bytes
            assert sum(s.unique_bytes for s in sites) >= total.unique_bytes
    # The kernel's own loops name the sites: the staged halo and the tap loop
    # (the 2 x 2 forward's staging at even s).
    assert trace.kernel == f"carafe_forward_tiled_k{K}_p4_float32"
    texts = " ".join(f.text for s in trace.sites for f in s.frames)
    assert "halo" in texts and "forward_quad_slots" in " ".join(s.call_chain for s in trace.sites)
