"""The memory-access tracer reports what a GPU's memory system would see."""

from __future__ import annotations

import numpy as np
import pytest
from sim_kernels import MAIN_SRC, line_of
from trace_kernels import TRACE_SRC

from carafe_cupy._sim import SimRuntime, SimulatorError
from carafe_cupy._sim.trace import LaunchTrace, tracing


def ptr(a: np.ndarray) -> np.uint64:
    return np.uint64(a.ctypes.data)


def run(kernel: str, grid: int, block: int, *arrays: np.ndarray, **kw) -> LaunchTrace:
    with tracing(**kw) as traces:
        SimRuntime().launch(
            "trace_mod", TRACE_SRC, kernel, (grid, 1, 1), (block, 1, 1), tuple(map(ptr, arrays))
        )
    assert len(traces) == 1
    return traces[0]


def test_strided_load_takes_a_sector_per_lane() -> None:
    x = np.arange(4 * 64 * 8, dtype=np.float32)
    y = np.zeros(4 * 64, np.float32)
    t = run("strided_load", 4, 64, x, y)
    np.testing.assert_array_equal(y, x[::8])
    assert (t.global_load.requests, t.global_load.bytes) == (8, 4 * 64 * 4)
    assert t.global_load.sectors_per_request == 32
    assert t.global_load.unique_bytes == y.nbytes  # one float of every eight
    assert t.global_store.sectors_per_request == 4
    assert t.shared_load.requests == t.shared_store.requests == 0
    assert (t.blocks_traced, t.blocks_total, t.grid, t.block) == (4, 4, (4, 1, 1), (64, 1, 1))


def test_coalesced_loads_take_four_sectors_and_float4_sixteen() -> None:
    x = np.arange(256, dtype=np.float32)
    y = np.zeros(256, np.float32)
    t = run("coalesced_load", 2, 128, x, y)
    assert t.global_load.requests == 8
    assert t.global_load.bytes_per_request == 128
    assert t.global_load.sectors_per_request == 4
    assert t.global_load.unique_bytes == t.global_store.unique_bytes == x.nbytes

    x4 = np.arange(256 * 4, dtype=np.float32)
    t = run("float4_load", 2, 128, x4, y)
    np.testing.assert_array_equal(y, x4.reshape(-1, 4).sum(axis=1))
    assert t.global_load.bytes_per_request == 512
    assert t.global_load.sectors_per_request == 16
    assert t.global_load.unique_bytes == x4.nbytes
    (site,) = [s for s in t.sites if s.space == "global" and s.direction == "load"]
    assert site.access_bytes == 16


def test_sectors_count_from_the_tensor_start_like_device_allocations() -> None:
    # A host buffer 16 bytes past a sector boundary: on a GPU the tensor would
    # start a 256-byte aligned allocation, so a warp still takes 4 sectors.
    raw = np.zeros(256 + 64, np.float32)
    start = (-raw.ctypes.data % 32 + 16) // 4
    x = raw[start : start + 256]
    assert x.ctypes.data % 32 == 16
    t = run("coalesced_load", 2, 128, x, np.zeros(256, np.float32))
    assert t.global_load.sectors_per_request == 4


def test_column_walk_of_a_32_wide_tile_conflicts_32_ways() -> None:
    x = np.arange(32 * 32, dtype=np.float32)
    y = np.zeros(32, np.float32)
    t = run("column_walk", 1, 32, x, y)
    np.testing.assert_array_equal(y, x.reshape(32, 32).sum(axis=1))
    assert t.shared_load.requests == 32
    assert t.shared_load.sectors_per_request == 32  # wavefronts
    assert t.shared_load.conflicts_per_request == 31
    assert t.shared_store.conflicts_per_request == 0  # the row-wise fill
    walk = [s for s in t.sites if s.space == "shared" and s.direction == "load"]
    assert [s.frames[0].line for s in walk] == [line_of(TRACE_SRC, "COLUMN_WALK")]
    assert walk[0].frames[0].file == "trace_mod.cu"
    assert "tile[t][c]" in walk[0].frames[0].text

    t = run("padded_column_walk", 1, 32, x, y)
    assert t.shared_load.requests == 32
    assert t.shared_load.bank_conflicts == 0


def test_eight_byte_shared_accesses_are_served_per_half_warp() -> None:
    x = np.arange(64, dtype=np.float64)
    y = np.zeros(32, np.float64)
    t = run("shared_doubles", 1, 32, x, y)
    np.testing.assert_array_equal(y, x[:32] + x[0:64:2])
    by_line = {s.frames[0].line: s for s in t.sites if s.space == "shared"}
    contiguous, strided = sorted(
        (s for s in t.sites if s.space == "shared" and s.direction == "load"),
        key=lambda s: s.bank_conflicts,
    )
    assert contiguous.frames[0].line == strided.frames[0].line == line_of(TRACE_SRC, "DOUBLES")
    assert (contiguous.sectors, contiguous.bank_conflicts) == (2, 0)  # two phases
    assert (strided.sectors, strided.bank_conflicts) == (4, 2)  # two-way in each phase
    assert all(s.access_bytes == 8 for s in by_line.values())


def test_broadcasts_do_not_conflict_and_touch_one_sector() -> None:
    x = np.full(1, 3.0, np.float32)
    y = np.zeros(64, np.float32)
    t = run("broadcast", 2, 32, x, y)
    assert (y == 6).all()
    loads = {(s.space, s.requests) for s in t.sites if s.direction == "load"}
    assert ("shared", 2) in loads
    assert t.shared_load.sectors_per_request == 1 and t.shared_load.bank_conflicts == 0
    assert t.global_load.unique_bytes == 4
    assert t.global_load.bytes > t.global_load.unique_bytes


def test_atomics_run_and_count_as_stores() -> None:
    counter = np.zeros(1, np.int32)
    y = np.zeros(64, np.float32)
    t = run("count_up", 2, 32, counter, y)
    assert counter[0] == 64
    atomic = [s for s in t.sites if s.access_bytes == 4 and s.direction == "store"]
    assert sum(s.accesses for s in atomic) == 128  # 64 atomics + 64 plain stores
    assert t.global_store.unique_bytes == 4 + y.nbytes


def test_sampling_traces_evenly_spread_blocks() -> None:
    x = np.arange(16 * 32, dtype=np.float32)
    t = run("coalesced_load", 16, 32, x, np.zeros(512, np.float32), max_blocks=4)
    assert (t.blocks_traced, t.blocks_total) == (4, 16)
    assert t.global_load.requests == 4
    assert t.global_load.unique_bytes == 4 * 128

    # Untraced blocks still run by default, and are skipped on request.
    y = np.zeros(512, np.float32)
    run("coalesced_load", 16, 32, x, y, max_blocks=2)
    np.testing.assert_array_equal(y, 2 * x)
    y = np.zeros(512, np.float32)
    t = run("coalesced_load", 16, 32, x, y, max_blocks=2, run_all_blocks=False)
    assert t.blocks_traced == 2
    written = np.flatnonzero(y.reshape(16, 32).any(axis=1))
    np.testing.assert_array_equal(written, [4, 12])  # (2i + 1) * 16 // 4, evenly spread


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_max_blocks_must_be_positive(bad) -> None:
    with pytest.raises(ValueError, match="max_blocks"):
        with tracing(bad):
            pass


def test_traced_runs_give_the_untraced_results() -> None:
    rng = np.random.default_rng(1)
    x = rng.random(1024, dtype=np.float32)
    outs = []
    for traced in (False, True):
        out = np.zeros(4, np.float32)
        args = (ptr(x), ptr(out), np.int32(1024))
        if traced:
            with tracing() as traces:
                SimRuntime("reverse").launch(
                    "main", MAIN_SRC, "reduce", (4, 1, 1), (256, 1, 1), args
                )
            assert traces[0].shared_store.requests > 0
        else:
            SimRuntime("reverse").launch("main", MAIN_SRC, "reduce", (4, 1, 1), (256, 1, 1), args)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_traffic_does_not_depend_on_the_thread_order() -> None:
    """Requests are counted per warp and site since the block last converged,
    so interleaving warps differently (or running them one at a time) changes
    nothing."""
    x = np.random.default_rng(2).random(1024, dtype=np.float32)
    out = np.zeros(4, np.float32)
    args = (ptr(x), ptr(out), np.int32(1024))
    seen = set()
    for order in ("forward", "reverse", "random", "warp-serial", "random-warp"):
        with tracing() as traces:
            SimRuntime(order, seed=3).launch(
                "main", MAIN_SRC, "reduce", (4, 1, 1), (256, 1, 1), args
            )
        (trace,) = traces
        seen.add((trace.global_load, trace.global_store, trace.shared_load, trace.shared_store))
    assert len(seen) == 1


def test_traced_and_plain_builds_are_separate_cache_entries(fresh_cache) -> None:
    x, y = np.zeros(256, np.float32), np.zeros(256, np.float32)
    args = (ptr(x), ptr(y))
    SimRuntime().launch("cache_split", TRACE_SRC, "coalesced_load", (2, 1, 1), (128, 1, 1), args)
    with tracing():
        SimRuntime().launch(
            "cache_split", TRACE_SRC, "coalesced_load", (2, 1, 1), (128, 1, 1), args
        )
    names = sorted(p.name for p in fresh_cache.glob("cache_split*.so"))
    assert len(names) == 2 and sum("-traced-" in n for n in names) == 1


def test_tracing_refuses_asan_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARAFE_CUPY_SIM_ASAN", "1")
    with pytest.raises(SimulatorError, match="tracing cannot run with CARAFE_CUPY_SIM_ASAN"):
        run("coalesced_load", 1, 32, np.zeros(32, np.float32), np.zeros(32, np.float32))
