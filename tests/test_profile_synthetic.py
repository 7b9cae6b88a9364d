"""The composed cost model on kernels whose time is known in closed form
(tests/profile_synthetic.cu), compiled by NVRTC for sm_90 and modelled as an H100.

Each expected value follows from the hardware's documented rates, not from the
model: a dependent FFMA waits 4 cycles for its operand (Jia et al.,
arXiv:1804.06826, Volta; the same on Ampere and Hopper), a scheduler issues one
warp-instruction per clock, the SM's shared-memory path moves one 128-byte
wavefront per clock, a dependent global load waits the DRAM latency, and a
stream is bound by DRAM bandwidth. Tolerances are stated per test; they cover
the loop's counter and branch and the code around the loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_profile import _nvrtc_and_nvdisasm

from carafe_cupy._kernels import sources as _sources
from carafe_cupy._plan.types import Launch
from carafe_cupy._profile import compose, hardware, model, static

SOURCE = (Path(__file__).parent / "profile_synthetic.cu").read_text()
MODULE = "profile_synthetic"
GPU = hardware.gpu("h100")
CLOCK = GPU.boost_clock_ghz * 1e3  # cycles per µs
TRIPS = 1000


@pytest.fixture(scope="module")
def kernels():
    _nvrtc_and_nvdisasm()
    original = _sources.kernel_source
    patch = pytest.MonkeyPatch()
    patch.setattr(
        _sources, "kernel_source", lambda name: SOURCE if name == MODULE else original(name)
    )
    try:
        yield static.module_static(MODULE, "sm_90")
    finally:
        patch.undo()


def modelled(kernels, name, blocks, threads, memory=None, trips=TRIPS):
    """The model's estimate; the run-time loops take ``trips`` trips, a fill loop 1."""
    kernel = kernels[name]
    work = model.execution(
        kernel, None, None, lambda loop: 1 if "// fill" in loop.source else trips
    )
    launch = Launch(MODULE, name, (blocks, 1, 1), (threads, 1, 1), 0, ())
    return compose.estimate(GPU, kernel, work, launch, memory or compose.Memory(4096))


FULL = dict(blocks=2 * GPU.sms, threads=1024)  # 2 blocks of 32 warps: 64 warps per SM
LOW = dict(blocks=1, threads=32)  # one warp on the GPU


@pytest.mark.parametrize(
    "name, occupancy, cycles",
    [
        # one warp: 64 FFMAs a trip, each waiting 4 cycles for the previous one
        ("ffma_dependent", LOW, TRIPS * 64 * 4),
        # one warp, 8 independent chains: one FFMA per clock, 128 a trip
        ("ffma_independent", LOW, TRIPS * 128),
        # 16 warps per scheduler hide the 4 cycles: 64 warps' FFMAs at 4 per clock
        ("ffma_dependent", FULL, TRIPS * 64 * 64 / 4),
        ("ffma_independent", FULL, TRIPS * 64 * 128 / 4),
    ],
)
def test_ffma_chains(kernels, name, occupancy, cycles):
    est = modelled(kernels, name, **occupancy)
    # the loop's counter and branch: 3 instructions and up to 8 stall cycles a trip
    assert est.est_us == pytest.approx(cycles / CLOCK, rel=0.1)
    assert est.latency_us == pytest.approx(0, abs=0.01 * est.est_us)


def _traced_conflict_factor(stride: int) -> float:
    """The tracer's shared-load wavefronts over the conflict-free count, on the simulator."""
    from carafe_cupy._profile.traffic import Traffic
    from carafe_cupy._sim.runtime import SimRuntime
    from carafe_cupy._sim.trace import tracing

    out = np.zeros(64, np.float32)
    args = (np.uint64(out.ctypes.data), np.int32(2), np.int32(stride))
    with tracing() as traces:
        SimRuntime().launch(MODULE, SOURCE, "lds_stream", (1, 1, 1), (64, 1, 1), args)
    (trace,) = traces
    return Traffic.conflict_factor(trace.shared_load.sectors, trace.shared_load.bank_conflicts)


@pytest.mark.parametrize("stride, wavefronts", [(1, 1), (32, 32)])
def test_shared_loads_one_wavefront_per_clock(kernels, stride, wavefronts):
    """64 warps x 32 loads a trip, each of 1 (conflict-free) or 32 (every lane in one
    bank) wavefronts, through a path of one wavefront per clock."""
    factor = _traced_conflict_factor(stride)
    assert factor == pytest.approx(wavefronts)
    memory = compose.Memory(4096, shared_load_factor=factor)
    est = modelled(kernels, "lds_stream", **FULL, memory=memory)
    cycles = TRIPS * 64 * 32 * wavefronts
    assert est.shared_us == pytest.approx(cycles / CLOCK, rel=0.02)
    assert est.est_us == pytest.approx(cycles / CLOCK, rel=0.1)
    assert est.bound == "shared"


def test_pointer_chase_waits_the_dram_latency_per_hop(kernels):
    memory = compose.Memory(4096, dram_share_of_loads=1.0)
    est = modelled(kernels, "pointer_chase", **LOW, memory=memory)
    cycles = TRIPS * GPU.dram_latency_cycles
    assert est.est_us == pytest.approx(cycles / CLOCK, rel=0.1)  # plus a few cycles a hop
    assert est.bound == "latency"
    # the latency is exposed: many warps chasing at once take no longer
    crowd = modelled(kernels, "pointer_chase", blocks=8 * GPU.sms, threads=256, memory=memory)
    assert crowd.est_us == pytest.approx(est.est_us, rel=0.1)


def test_streaming_copy_is_bound_by_dram(kernels):
    count = 2**22  # float4 elements: 64 MiB read and 64 MiB written
    moved = 2 * 16 * count
    memory = compose.Memory(
        moved, sectors=moved / 32, load_sectors_per_request=16, store_sectors_per_request=16
    )
    est = modelled(kernels, "stream_copy", blocks=count // 256, threads=256, memory=memory)
    expected = moved / (GPU.hbm_gb_per_s * GPU.achievable_dram_share * 1e3)
    assert est.est_us == pytest.approx(expected, rel=0.01)
    assert est.bound == "dram" and est.sm_us < est.dram_us
    assert est.floor_us == pytest.approx(moved / (GPU.hbm_gb_per_s * 1e3))
