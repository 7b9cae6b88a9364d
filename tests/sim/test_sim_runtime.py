"""Kernels run by the CPU simulator give CUDA's results; misuse is diagnosed."""

from __future__ import annotations

import numpy as np
import pytest
from sim_kernels import BROKEN_SRC, FAST_SRC, MAIN_SRC, line_of

from carafe_cupy._sim import SimRuntime, SimulatorError, get_runtime
from carafe_cupy._sim import runtime as sim_runtime

ROUND_ORDERS = ["forward", "reverse", "random"]  # every runnable thread once a round
WARP_ORDERS = ["warp-serial", "random-warp"]  # one warp at a time between block barriers
ORDERS = ROUND_ORDERS + WARP_ORDERS


def ptr(a: np.ndarray) -> np.uint64:
    return np.uint64(a.ctypes.data)


@pytest.fixture(params=ORDERS)
def rt(request: pytest.FixtureRequest) -> SimRuntime:
    return SimRuntime(request.param, seed=7)


def test_vector_add_grid_stride(rt: SimRuntime) -> None:
    n = 1000
    rng = np.random.default_rng(0)
    a, b = rng.random(n, dtype=np.float32), rng.random(n, dtype=np.float32)
    c = np.zeros(n, np.float32)
    rt.launch(
        "main", MAIN_SRC, "vadd", (3, 1, 1), (64, 1, 1), (ptr(a), ptr(b), ptr(c), np.int32(n))
    )
    np.testing.assert_array_equal(c, a + b)


def test_3d_indices(rt: SimRuntime) -> None:
    grid, block = (2, 3, 2), (4, 2, 3)
    nthr = np.prod(block)
    out = np.full((np.prod(grid) * nthr, 6), -1, np.int32)
    rt.launch("main", MAIN_SRC, "idx3d", grid, block, (ptr(out),))
    want = [
        (tx, ty, tz, bx, by, bz)
        for bz in range(grid[2])
        for by in range(grid[1])
        for bx in range(grid[0])
        for tz in range(block[2])
        for ty in range(block[1])
        for tx in range(block[0])
    ]
    np.testing.assert_array_equal(out, np.array(want, np.int32))


def test_dynamic_shared_macro(rt: SimRuntime) -> None:
    x = np.arange(3 * 128, dtype=np.float32)
    out = np.zeros_like(x)
    rt.launch("main", MAIN_SRC, "dyn_reverse", (3, 1, 1), (128, 1, 1), (ptr(x), ptr(out)), 128 * 4)
    np.testing.assert_array_equal(out, x.reshape(3, 128)[:, ::-1].ravel())


def test_dynamic_shared_extern_rewrite(rt: SimRuntime) -> None:
    x = np.arange(2 * 96, dtype=np.float64)
    out = np.zeros_like(x)
    rt.launch(
        "main", MAIN_SRC, "dyn_reverse_extern", (2, 1, 1), (96, 1, 1), (ptr(x), ptr(out)), 96 * 8
    )
    np.testing.assert_array_equal(out, x.reshape(2, 96)[:, ::-1].ravel())


def test_block_reduction_all_orders(rt: SimRuntime) -> None:
    n = 5000
    x = np.random.default_rng(1).random(n, dtype=np.float32)
    out = np.zeros(4, np.float32)
    rt.launch("main", MAIN_SRC, "reduce", (4, 1, 1), (256, 1, 1), (ptr(x), ptr(out), np.int32(n)))
    np.testing.assert_allclose(out.sum(), x.sum(dtype=np.float64), rtol=1e-5)


def test_warp_primitives(rt: SimRuntime) -> None:
    nthreads, nblocks = 96, 2
    n = nthreads * nblocks
    x = np.random.default_rng(2).random(n, dtype=np.float32)
    down = np.zeros(n // 32, np.float32)
    xr, scan, bcast = (np.zeros(n, np.float32) for _ in range(3))
    ballot = np.zeros(n // 32, np.uint32)
    args = (ptr(x), ptr(down), ptr(xr), ptr(scan), ptr(bcast), ptr(ballot))
    rt.launch("main", MAIN_SRC, "warp_ops", (nblocks, 1, 1), (nthreads, 1, 1), args)
    w = x.reshape(-1, 32)
    np.testing.assert_allclose(down, w.sum(1), rtol=1e-5)
    np.testing.assert_allclose(xr, np.repeat(w.sum(1), 32), rtol=1e-5)
    np.testing.assert_allclose(scan, np.cumsum(w, axis=1).ravel(), rtol=1e-5)
    np.testing.assert_array_equal(bcast, np.repeat(x.reshape(-1, 8)[:, 3], 8))
    bits = (w > 0.5).astype(np.uint64) << np.arange(32, dtype=np.uint64)
    np.testing.assert_array_equal(ballot, bits.sum(1).astype(np.uint32))


def test_atomics(rt: SimRuntime) -> None:
    n = 777
    x = np.random.default_rng(3).integers(-1000, 1000, n).astype(np.int32)
    fsum = np.zeros(1, np.float32)
    imax = np.array([np.iinfo(np.int32).min], np.int32)
    imin = np.array([np.iinfo(np.int32).max], np.int32)
    count = np.zeros(1, np.uint64)
    dsum = np.zeros(1, np.float64)
    args = (ptr(x), np.int32(n), ptr(fsum), ptr(imax), ptr(count), ptr(dsum), ptr(imin))
    rt.launch("main", MAIN_SRC, "atomics", (2, 1, 1), (128, 1, 1), args)
    assert fsum[0] == x.sum()
    assert imax[0] == x.max() and imin[0] == x.min()
    assert count[0] == n
    assert dsum[0] == x.sum() * 0.5


def test_bit_casts_and_math(rt: SimRuntime) -> None:
    x = np.array([0.0, 1.5, -2.25, 3.0e-3], np.float32)
    u = np.zeros(4, np.uint32)
    y = np.zeros(4, np.float32)
    rt.launch("main", MAIN_SRC, "bits", (1, 1, 1), (4, 1, 1), (ptr(x), ptr(u), ptr(y)))
    np.testing.assert_array_equal(u, x.view(np.uint32))
    np.testing.assert_array_equal(y, -x + 1.0)


def test_missing_syncthreads_gives_wrong_results() -> None:
    x = np.arange(64, dtype=np.float32) + 1
    want = np.roll(x, 1)
    results = {}
    for order in ("forward", "reverse"):
        rt = SimRuntime(order)
        good = np.zeros(64, np.float32)
        rt.launch("broken", BROKEN_SRC, "with_sync", (1, 1, 1), (64, 1, 1), (ptr(x), ptr(good)))
        np.testing.assert_array_equal(good, want)
        out = np.zeros(64, np.float32)
        rt.launch("broken", BROKEN_SRC, "no_sync", (1, 1, 1), (64, 1, 1), (ptr(x), ptr(out)))
        results[order] = out
    assert any(not np.array_equal(r, want) for r in results.values())


def run_tickets(order: str, seed: int, blocks: int = 8, threads: int = 96) -> np.ndarray:
    """[block, phase, thread]: when each thread ran before the warp barrier,
    after it, and after the block barrier (0, 1, ... per block)."""
    counter = np.zeros(blocks, np.uint32)
    out = np.zeros(blocks * 3 * threads, np.uint32)
    args = (ptr(counter), ptr(out))
    SimRuntime(order, seed).launch(
        "main", MAIN_SRC, "tickets", (blocks, 1, 1), (threads, 1, 1), args
    )
    return out.reshape(blocks, 3, threads)


def test_round_orders_take_every_warp_to_a_warp_barrier_first() -> None:
    tickets = run_tickets("forward", 0)
    np.testing.assert_array_equal(tickets[:, 0], np.broadcast_to(np.arange(96), (8, 96)))
    np.testing.assert_array_equal(tickets[:, 1], tickets[:, 0] + 96)


@pytest.mark.parametrize("order", WARP_ORDERS)
def test_warp_orders_run_one_warp_at_a_time(order: str) -> None:
    tickets = run_tickets(order, seed=5)
    lanes = np.arange(32)
    schedules = set()
    for block in tickets:
        before, after, final = (phase.reshape(3, 32) for phase in block)
        # from the start to the block barrier each warp runs alone, through
        # its warp barrier, lanes in order
        slot = before[:, 0] // 64
        assert sorted(slot) == [0, 1, 2]
        after_barrier = (final[:, 0] - 192) // 32
        assert sorted(after_barrier) == [0, 1, 2]
        for warp in range(3):
            np.testing.assert_array_equal(before[warp], 64 * slot[warp] + lanes)
            np.testing.assert_array_equal(after[warp], 64 * slot[warp] + 32 + lanes)
            np.testing.assert_array_equal(final[warp], 192 + 32 * after_barrier[warp] + lanes)
        schedules.update((tuple(slot), tuple(after_barrier)))
    if order == "warp-serial":
        assert schedules == {(0, 1, 2)}
    else:  # shuffled per block and per block barrier; the seed fixes the schedule
        assert len(schedules) > 1
        np.testing.assert_array_equal(run_tickets(order, seed=5), tickets)
        assert not np.array_equal(run_tickets(order, seed=6), tickets)


def test_barrier_free_modules_run_threads_in_the_order_asked(rt: SimRuntime) -> None:
    blocks, threads = 8, 96
    counter = np.zeros(blocks, np.uint32)
    out = np.zeros(blocks * threads, np.uint32)
    rt.launch(
        "fast", FAST_SRC, "run_order", (blocks, 1, 1), (threads, 1, 1), (ptr(counter), ptr(out))
    )
    tickets = out.reshape(blocks, threads)
    for block in tickets:
        assert sorted(block) == list(range(threads))
    in_order = np.broadcast_to(np.arange(threads), tickets.shape)
    if rt.order in ("forward", "warp-serial"):
        np.testing.assert_array_equal(tickets, in_order)
    elif rt.order == "reverse":
        np.testing.assert_array_equal(tickets, in_order[:, ::-1])
    elif rt.order == "random":
        assert not np.array_equal(tickets, in_order)
    else:  # random-warp: whole warps, lanes in order, warps shuffled
        warps = tickets.reshape(blocks, 3, 32)
        np.testing.assert_array_equal(
            warps - warps[:, :, :1], np.broadcast_to(np.arange(32), warps.shape)
        )
        assert not np.array_equal(tickets, in_order)


def test_a_warp_barrier_for_a_block_barrier_is_caught_by_the_warp_orders() -> None:
    x = np.arange(64, dtype=np.float32) + 1
    want = np.roll(x, 32)
    results = {}
    for order in ORDERS:
        out = np.zeros(64, np.float32)
        args = (ptr(x), ptr(out))
        SimRuntime(order, seed=1).launch(
            "broken", BROKEN_SRC, "warp_sync_only", (1, 1, 1), (64, 1, 1), args
        )
        results[order] = out
    # the round orders take every warp to the warp barrier before any passes
    # it, so they cannot see the difference: the reason the warp orders exist
    for order in ROUND_ORDERS:
        np.testing.assert_array_equal(results[order], want)
    for order in WARP_ORDERS:
        assert np.isnan(results[order]).any(), order


def test_barrier_in_divergent_code_is_an_error() -> None:
    out = np.zeros(32, np.float32)
    with pytest.raises(SimulatorError, match=r"(?s)exited.*__syncthreads.*broken\.cu:"):
        SimRuntime().launch("broken", BROKEN_SRC, "divergent", (1, 1, 1), (32, 1, 1), (ptr(out),))


def test_different_barrier_sites_are_an_error() -> None:
    out = np.zeros(32, np.float32)
    with pytest.raises(SimulatorError) as info:
        SimRuntime().launch("broken", BROKEN_SRC, "two_sites", (1, 1, 1), (32, 1, 1), (ptr(out),))
    msg = str(info.value)
    assert "different __syncthreads" in msg
    assert f"broken.cu:{line_of(BROKEN_SRC, 'SITE_A')}" in msg
    assert f"broken.cu:{line_of(BROKEN_SRC, 'SITE_B')}" in msg


def test_deadlock_and_bad_mask_are_errors_and_runtime_recovers(rt: SimRuntime) -> None:
    out = np.zeros(32, np.float32)
    with pytest.raises(SimulatorError, match="deadlock"):
        rt.launch("broken", BROKEN_SRC, "warp_deadlock", (1, 1, 1), (32, 1, 1), (ptr(out),))
    with pytest.raises(SimulatorError, match="not in the member mask"):
        rt.launch("broken", BROKEN_SRC, "bad_mask", (1, 1, 1), (32, 1, 1), (ptr(out),))
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(64, np.float32)
    rt.launch("broken", BROKEN_SRC, "with_sync", (1, 1, 1), (64, 1, 1), (ptr(x), ptr(out)))
    np.testing.assert_array_equal(out, np.roll(x, 1))


def test_argument_checks() -> None:
    rt = SimRuntime()
    c = np.zeros(4, np.float32)
    with pytest.raises(SimulatorError, match="parameter 3 is 4 bytes"):
        rt.launch(
            "main", MAIN_SRC, "vadd", (1, 1, 1), (4, 1, 1), (ptr(c), ptr(c), ptr(c), np.int64(4))
        )
    with pytest.raises(SimulatorError, match="takes 4 parameters"):
        rt.launch("main", MAIN_SRC, "vadd", (1, 1, 1), (4, 1, 1), (ptr(c),))
    with pytest.raises(TypeError, match="numpy scalar"):
        rt.launch("main", MAIN_SRC, "vadd", (1, 1, 1), (4, 1, 1), (ptr(c), ptr(c), ptr(c), 4))
    with pytest.raises(SimulatorError, match="not found"):
        rt.launch("main", MAIN_SRC, "nope", (1, 1, 1), (4, 1, 1), ())
    with pytest.raises(
        ValueError, match=r"order must be one of forward, .*random-warp; got 'sideways'"
    ):
        SimRuntime("sideways")


def test_compile_error_names_module_and_line() -> None:
    src = 'extern "C" __global__ void k(float* x) {\n  x[0] = undefined_name;\n}\n'
    with pytest.raises(SimulatorError, match=r"(?s)bad_mod.*bad_mod\.cu:2"):
        SimRuntime().launch("bad_mod", src, "k", (1, 1, 1), (1, 1, 1), (np.uint64(0),))


def test_get_runtime_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from carafe_cupy._sim import runtime

    monkeypatch.setattr(runtime, "_runtime", None)
    monkeypatch.setenv("CARAFE_CUPY_SIM_ORDER", "random")
    monkeypatch.setenv("CARAFE_CUPY_SIM_SEED", "42")
    rt = get_runtime()
    assert (rt.order, rt.seed) == ("random", 42)
    assert get_runtime() is rt
    for order in WARP_ORDERS:
        monkeypatch.setattr(runtime, "_runtime", None)
        monkeypatch.setenv("CARAFE_CUPY_SIM_ORDER", order.upper())
        assert (get_runtime().order, get_runtime().seed) == (order, 42)
    monkeypatch.setattr(runtime, "_runtime", None)
    monkeypatch.setenv("CARAFE_CUPY_SIM_ORDER", "warp_serial")
    choices = "forward, reverse, random, warp-serial, random-warp"
    with pytest.raises(
        ValueError, match=f"CARAFE_CUPY_SIM_ORDER must be one of {choices}; got 'warp_serial'"
    ):
        get_runtime()
    monkeypatch.setenv("CARAFE_CUPY_SIM_ORDER", "random")
    monkeypatch.setenv("CARAFE_CUPY_SIM_SEED", "seven")
    with pytest.raises(
        ValueError, match="CARAFE_CUPY_SIM_SEED must be an integer, got 'seven'"
    ):
        get_runtime()


def test_every_order_is_tested() -> None:
    assert sim_runtime.ORDERS == tuple(ORDERS)
