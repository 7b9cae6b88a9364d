"""The cost model: ptxas/SASS parsing on real NVRTC output, the occupancy rules,
the time model's arithmetic, and the CLI's JSON on a small shape."""

from __future__ import annotations

import json

import pytest

from carafe_cupy._plan import planner as _planner
from carafe_cupy._profile import compose, control, hardware, model, static
from carafe_cupy._profile.occupancy import occupancy

MODULE = "carafe_tiled_float32_k5"


def _nvrtc_and_nvdisasm():
    pytest.importorskip("cupy")
    try:
        static.find_nvdisasm()
    except FileNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def sm90_kernels():
    _nvrtc_and_nvdisasm()
    return static.module_static(MODULE, "sm_90")


def test_ptxas_report_fields():
    log = (
        "ptxas info    : Compiling entry function 'a' for 'sm_90'\n"
        "ptxas info    : Function properties for a\n"
        "ptxas         .     8 bytes stack frame, 16 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 1024 bytes smem, 360 bytes cmem[0]\n"
        "ptxas info    : Compiling entry function 'b' for 'sm_90'\n"
        "ptxas info    : Used 32 registers, used 0 barriers\n"
    )
    report = static.parse_ptxas(log)
    assert report["a"] == static.Resources(255, 16, 12, 8, 1024)
    assert report["b"] == static.Resources(32, 0, 0, 0, 0)


def test_static_analysis_of_real_nvrtc_output(sm90_kernels):
    from carafe_cupy._kernels import sources as _sources

    assert set(_sources.module_kernel_names(MODULE)) <= set(sm90_kernels)
    for kernel in sm90_kernels.values():
        assert 32 <= kernel.resources.registers <= 255
        assert kernel.resources.spill_stores == kernel.resources.spill_loads == 0
        # every instruction is straight-line, in exactly one loop's own body, or a subroutine
        own = sum(loop.own_instructions for loop in kernel.loops)
        total = kernel.straight_line_instructions + own + kernel.subroutine_instructions
        assert total == kernel.instructions
    forward = sm90_kernels["carafe_forward_tiled_k5_p1_float32"]
    channel = [i for i, loop in enumerate(forward.loops) if "c0 += channel_batch" in loop.source]
    assert len(channel) == 1, [loop.source for loop in forward.loops]
    # the halo staging is unrolled into the channel loop's own body: it loads from
    # global memory and stores to shared memory there, and the tap loop nests inside
    staging = forward.loops[channel[0]]
    assert staging.global_loads >= 1 and staging.shared_stores >= 1 and staging.load_rounds >= 1
    taps = [loop for loop in forward.loops if "cc < count" in loop.source]
    assert taps and all(loop.parent == channel[0] for loop in taps)


@pytest.mark.parametrize(
    "gpu, threads, registers, shared, expected",
    [
        # 32 registers: 1024 per warp, 16 warps per sub-partition, 64 per SM = the warp limit
        ("h100", 256, 32, 0, (8, 64, "warps")),
        # 114 registers -> 3648 -> 3840 per warp; 16384 // 3840 = 4 warps per partition
        ("h100", 256, 114, 17 * 1024, (2, 16, "registers")),
        # 48 KiB + 1 KiB reserved = 50176 B per block; 164 KiB // 50176 = 3 blocks
        ("a100", 256, 32, 48 * 1024, (3, 24, "shared memory")),
        # T4: 32 warps per SM, a 1024-thread block fills it
        ("t4", 1024, 32, 0, (1, 32, "warps")),
        # one-warp blocks of few registers run into the 16-block limit on a T4
        ("t4", 32, 16, 0, (16, 16, "blocks")),
        # more shared memory than a block may have: nothing runs
        ("t4", 256, 32, 65 * 1024, (0, 0, "shared memory")),
    ],
)
def test_occupancy_matches_hand_computed_cases(gpu, threads, registers, shared, expected):
    result = occupancy(hardware.gpu(gpu), threads, registers, shared)
    assert (result.blocks_per_sm, result.warps_per_sm, result.limited_by) == expected


def _loop(line, source, own, parent=None, loads=0, stores=0, rounds=0):
    return static.Loop(0, 0, line, source, own, own, loads, stores, rounds, parent)


def test_loop_trips_and_executed_instructions():
    geometry = _planner.Geometry(1, 64, 16, 16, 5, 1, 2)
    launch = _planner.Launch("m", "carafe_forward_tiled_k5_p1_float32", (264, 1, 1), (32, 8, 1),
                             4 * 1024, (0, 1, None, 2), (16, 4))
    loops = (
        _loop(10, "for (index_t c0 = c_begin; c0 < c_end; c0 += channel_batch)", 30,
              loads=2, rounds=1),
        _loop(11, "for (int e = thread; e < total; e += threads) {", 40, parent=0,
              loads=2, stores=2, rounds=2),
        _loop(12, "for (int cc = 0; cc < count; ++cc) {", 50, parent=0),
    )
    kernel = static.KernelStatic("k", "sm_90", static.Resources(64, 0, 0, 0, 0), 500, 0, 100,
                                 1, loops)
    work = model.execution(kernel, launch, geometry)
    # channel loop: 16 / 4 = 4 trips; staging: 4 channels * 9 halo rows * 36 columns =
    # 1296 elements, ceil(1296 / 256) = 6 passes, unrolled by 2 -> 3 trips; cc: 4 trips
    assert [trips for _, trips, _ in work.loops] == [4, 3, 4]
    assert work.instructions == 100 + 4 * (30 + 3 * 40 + 4 * 50)
    assert work.load_rounds == 1 + 4 * (1 + 3 * 2)
    # a caller's trip counts replace the plan's
    fixed = model.execution(kernel, None, None, lambda loop: 2)
    assert fixed.instructions == 100 + 2 * (30 + 2 * 40 + 2 * 50)


@pytest.mark.parametrize(
    "high_word, stall, write, read, waits",
    [
        (0x000FE20000000800, 1, None, None, ()),  # LDC R1: one cycle, no scoreboard
        (0x000E220000000800, 1, 0, None, ()),  # LDC R13: writes scoreboard 0
        (0x010FC4000F8E02FF, 2, None, None, (4,)),  # IMAD: waits for scoreboard 4
        (0x0209E80000000800, 4, None, 4, (5,)),  # STS: waits for its load, frees on 4
    ],
)
def test_control_bits_decode(high_word, stall, write, read, waits):
    """High words of sm_90 instructions from nvdisasm -hex (the first three from the
    tiled forward's prologue)."""
    ctl = control.decode(high_word)
    assert (ctl.stall, ctl.write_scoreboard, ctl.read_scoreboard, ctl.waits) == (
        stall, write, read, waits
    )


def test_control_bits_reach_every_instruction(sm90_kernels):
    forward = sm90_kernels["carafe_fused_forward_k5_float32"]  # a rolled channel loop
    assert len(forward.body) == forward.instructions - forward.subroutine_instructions
    assert all(i.control is not None for i in forward.body)
    taps = [i for i, loop in enumerate(forward.loops) if "cc < count" in loop.source]
    body = forward.own_body(taps[0])
    # every FFMA of the tap loop waits for a shared load's scoreboard or a stall count
    loads = [i for i in body if i.opcode == "LDS"]
    assert len(loads) == 25 and all(i.control.write_scoreboard is not None for i in loads)


def test_loads_waited_together():
    from carafe_cupy._profile.schedule import GLOBAL_LOAD, OTHER

    def load(board):
        return (1, (), board, -1, GLOBAL_LOAD, 1.0)

    def use(*boards):
        return (1, boards, -1, -1, OTHER, 0.0)

    # staged in pairs, each pair waited for before the next is loaded (16-bit staging)
    assert compose.loads_per_wait((load(2), load(3), use(2), use(3)) * 2) == 2
    # all four in flight, then one wait (32-bit staging)
    assert compose.loads_per_wait((load(5), load(5), load(5), load(5), use(5))) == 4
    # a load never waited for in the loop counts as one group
    assert compose.loads_per_wait((load(1), use())) == 1


def test_rounds_text():
    from carafe_cupy._profile.cli import rounds_text

    assert rounds_text([2, 2, 2, 1]) == "2 x 3 + 1"
    assert rounds_text([1]) == "1"


def test_busiest_sm_rounds_and_random_phase_latency():
    # 390 blocks on 132 SMs, 2 resident: the busiest SM runs 2, then 1 alone
    assert compose.busiest_rounds(390, 132, 2) == (2, 1)
    assert compose.busiest_rounds(264, 132, 2) == (2,)
    assert compose.busiest_rounds(100, 132, 4) == (1,)
    # one block waits fully; more blocks hide part of the wait, never below G + P / b
    assert compose.round_time(1000, 400, 1) == 1400
    two = compose.round_time(1000, 400, 2)
    assert two == pytest.approx((1000 + (1000**2 + 4 * 400**2) ** 0.5) / 2, rel=1e-6)
    assert 1000 < two < 1400
    assert compose.round_time(100, 5000, 4) >= 5000 + 100 / 4
    assert compose.round_time(1000, 0, 2) == 1000


def test_profile_cli_json_schema(tmp_path, capsys):
    _nvrtc_and_nvdisasm()
    from carafe_cupy.__main__ import main
    from carafe_cupy._profile.cli import PUBLIC_FIELDS

    path = tmp_path / "profile.json"
    assert main(["profile", "--shapes", "1,8,6,10", "--gpu", "h100,t4", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "a model, not a measurement" in printed and "Scaled, not exact" in printed
    data = json.loads(path.read_text())
    assert list(data) == ["records", "summary"]
    kernels = {record["kernel"] for record in data["records"]}
    assert "carafe_forward_tiled_k5_p4_float32" in kernels
    # the 2 x 2 grad_masks, in the form grid fit picks (one kernel row a block: short grid)
    assert "carafe_backward_masks_tiled_k5_p4_r1_float32" in kernels
    for record in data["records"]:
        assert tuple(record) == PUBLIC_FIELDS
        assert record["shape"] == "1,8,6,10" and record["gpu"] in ("h100", "t4")
        assert record["registers"] > 0 and record["occupancy"]["blocks_per_sm"] >= 1
        sass = record["sass_instructions"]
        assert sass["per_warp"] > sass["straight_line"] and sass["static"] > 0
        assert 1 <= record["sectors_per_request"]["load"] <= 32
        assert record["global_bytes"]["load"] > 0 and record["global_bytes"]["compulsory"] > 0
        assert record["blocks"] >= 1 and record["waves"] > 0
        assert record["est_us"] >= record["floor_achievable_us"] > record["floor_us"] > 0
        assert 0 < record["pct_of_floor"] <= record["pct_of_achievable_floor"] <= 100
        # every bound is kept; the estimate composes them, the SM's time at least its parts
        terms = [record[f"{term}_us"] for term in ("dram", "l2", "shared", "issue", "latency")]
        assert all(term is not None and term >= 0 for term in terms)
        assert record["est_us"] == pytest.approx(
            max(record["sm_us"], record["dram_us"], record["l2_us"]), abs=2e-3
        )
        assert record["sm_us"] >= max(record["shared_us"], record["issue_us"]) - 2e-3
        assert record["est_in_phase_us"] >= record["est_us"] - 2e-3
        assert record["data_path_us"] >= record["shared_us"]
        assert 0 < record["issue_efficiency"] <= 1
        assert record["bound"] in ("dram", "l2", "shared", "issue", "latency")
        assert sum(record["busiest_sm_rounds"]) == -(-record["blocks"] // (
            132 if record["gpu"] == "h100" else 40))
    assert [(s["gpu"], s["shape"]) for s in data["summary"]] == [("h100", "1,8,6,10"),
                                                                  ("t4", "1,8,6,10")]
    for row in data["summary"]:
        assert set(row) == {
            "shape", "dtype", "gpu", "forward_pct_of_floor", "fwd_bwd_pct_of_floor",
            "forward_pct_of_achievable_floor", "fwd_bwd_pct_of_achievable_floor",
            "forward_est_us", "fwd_bwd_est_us", "host_torch_forward_us", "host_torch_fwd_bwd_us",
            "host_array_forward_us", "cupy_launch_us_assumed", "host_forward_us",
            "host_fwd_bwd_us", "forward_bound", "fwd_bwd_bound", "unfold_forward_floor_us",
            "unfold_fwd_bwd_floor_us", "unfold_extra_mb",
        }
        assert 0 < row["fwd_bwd_pct_of_floor"] <= 100 and row["host_torch_forward_us"] > 0
        # one forward launch, two backward: the assumed CuPy cost added per launch
        assert row["host_forward_us"] == pytest.approx(
            row["host_torch_forward_us"] + row["cupy_launch_us_assumed"], abs=0.11
        )
        assert row["host_fwd_bwd_us"] == pytest.approx(
            row["host_torch_fwd_bwd_us"] + 3 * row["cupy_launch_us_assumed"], abs=0.11
        )
        # at this tiny shape the host takes longer than the modelled GPU work
        assert row["forward_bound"] == row["fwd_bwd_bound"] == "host"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shapes", "1,2,3"], "--shapes takes"),
        (["--shapes", "1,4,5,5", "--groups", "3"], "--groups must divide"),
        (["--k", "4"], "--k must be a positive odd"),
        (["--gpu", "v100"], "--gpu must be among h100, a100, t4"),
        (["--stride", "2", "--scale", "2"], "at most one of --scale and --stride"),
        (["--dilation", "0"], "must be positive"),
        (["--shapes", "rednet,1"], "--shapes takes"),
    ],
)
def test_profile_cli_rejects_bad_arguments(argv, message, capsys):
    from carafe_cupy.__main__ import main

    assert main(["profile", *argv]) == 2
    assert message in capsys.readouterr().err


def test_simulated_unique_bytes_are_the_tensors(monkeypatch):
    """The tracer's unique bytes of a whole forward grid are exactly its tensors
    (the masks of taps outside the image are never read: they weigh nothing)."""
    import numpy as np

    import carafe_cupy
    from carafe_cupy._sim.trace import tracing

    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    features = np.ones((1, 4, 6, 10), np.float32)
    masks = np.ones((1, 25, 12, 20), np.float32)
    with tracing() as traces:
        output = carafe_cupy.carafe(features, masks, 5, 1, 2)
    (trace,) = traces
    rows = np.arange(12)[:, None] // 2 + np.arange(5)[None, :] - 2  # (out row, tap row)
    cols = np.arange(20)[:, None] // 2 + np.arange(5)[None, :] - 2
    rows_in = ((rows >= 0) & (rows < 6)).sum(axis=1)
    cols_in = ((cols >= 0) & (cols < 10)).sum(axis=1)
    taps_read = int(rows_in.sum() * cols_in.sum())
    assert trace.global_load.unique_bytes == features.nbytes + taps_read * masks.itemsize
    assert trace.global_store.unique_bytes == output.nbytes


def test_reduced_simulation_scales_to_the_full_launch_exactly(monkeypatch):
    """One image and one channel slice, scaled by images x slices, equals the whole grid."""
    import numpy as np

    import carafe_cupy
    from carafe_cupy._profile import traffic
    from carafe_cupy._sim.trace import tracing

    geometry = _planner.Geometry(2, 64, 6, 10, 5, 2, 2)  # 32 channels a group: 2 slices
    (launch,) = traffic.planned("forward", geometry, "float32")
    assert launch.tiling[0] < geometry.channels // geometry.group_size  # sliced channels
    scaled = traffic.simulate("forward", launch, geometry, "float32")
    assert scaled.exact
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    rng = np.random.default_rng(1)
    features = rng.random((2, 64, 6, 10), dtype=np.float32)
    masks = rng.random((2, 50, 12, 20), dtype=np.float32)
    with tracing() as traces:
        carafe_cupy.carafe(features, masks, 5, 2, 2)
    (full,) = traces
    assert full.kernel == launch.kernel and full.blocks_total == launch.blocks
    assert scaled.load_bytes == full.global_load.bytes
    assert scaled.load_requests == full.global_load.requests
    assert scaled.load_sectors == full.global_load.sectors
    assert scaled.store_sectors == full.global_store.sectors
    conflicts = full.shared_load.bank_conflicts + full.shared_store.bank_conflicts
    assert scaled.bank_conflicts == conflicts


def test_profile_without_cupy_says_what_to_install():
    """No traceback: the reason, what to install from the repository, and a non-zero exit."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; sys.modules['cupy'] = None\n"  # as if CuPy were not installed
        "from carafe_cupy.__main__ import main\n"
        "sys.exit(main(['profile', '--shapes', '1,8,6,10']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "CuPy could not be imported" in result.stderr
    assert 'pip install ".[cuda13,profile]"' in result.stderr
    assert result.stdout == ""
