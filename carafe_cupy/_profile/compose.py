"""The model's time for one launch: the busiest SM's blocks, composed from what
its schedulers, its shared-memory path and its exposed load latency need, and
bounded below by DRAM and L2 (all in cycles of ``gpu.boost_clock_ghz``).

The formula (``docs/performance.md`` gives it too)::

    est = max(sm, dram, l2)
    sm  = sum over the busiest SM's rounds r of T_r
    T_r : the root of  T = P + G * (G / T) ** (b - 1),  at least G + P / b
    P   = sum over loops l of e_l * cycles_l(n)       (scheduler model, data path included)
    G   = sum over loops l of e_l * (one warp's cycles_l at L2/DRAM latency
                                     - the same at L1 latency)
          (a wait lasts DRAM's latency unless all m loads it waits for hit L2, each
           missing with the launch's DRAM share of loaded bytes f:
           L2 + (DRAM - L2)(1 - (1-f)^m), m = the loop's loads per wait for them)
    dram = compulsory bytes / achievable DRAM bandwidth
    l2   = sectors * 32 B / L2 bandwidth

* Rounds: the busiest SM gets B = ceil(blocks / SMs) blocks and runs at most R
  at once (occupancy), so rounds of R blocks and a last one of B mod R: a lone
  tail block runs at the issue rate of its own warps only.
* ``est_in_phase_us`` takes T_r = P + G instead: every round's blocks waiting
  together, the pessimistic end of the latency term (blocks start a round in
  phase, and drift apart over it).
* e_l: entries into loop l per warp (trip counts from the plan); the
  straight-line code counts once.
* cycles_l(n): ``schedule.entry_cycles``, one entry's trips of the loop's own
  body for n = ceil(b * warps per block / 4) warps on a scheduler: stall counts,
  scoreboards, barriers and the data path.
* G: what one block waits, all its warps at once, for global loads whose
  results are needed before other work can issue (synchronous staging).
* T_r: b blocks at random relative phase: the SM idles only while all b wait,
  and a block waits for a share G / T of the round. One block: T = P + G.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._plan.planner import Launch
from .hardware import SECTOR_BYTES, WARP_SIZE, GpuModel
from .model import Execution
from .occupancy import Occupancy, occupancy
from .schedule import GLOBAL_LOAD, SHARED, Latencies, entry_cycles, ops_for
from .static import KernelStatic

SCHEDULERS = 4


@dataclass(frozen=True)
class Memory:
    """What the launch's memory accesses look like (from the tracer, or defaults)."""

    compulsory_bytes: int  # every tensor of the launch once
    sectors: float | None = None  # 32-byte sectors requested, loads and stores; None: unknown
    load_sectors_per_request: float = 4.0
    store_sectors_per_request: float = 4.0
    shared_load_factor: float = 1.0  # wavefronts per shared load over the conflict-free count
    shared_store_factor: float = 1.0
    dram_share_of_loads: float = 1.0  # of the bytes loaded, the share that misses L2


@dataclass(frozen=True)
class Estimate:
    """The model's time for one launch on one GPU, every term in µs."""

    occupancy: Occupancy
    waves: float
    rounds: tuple[int, ...]  # blocks resident in each round on the busiest SM
    warp_instructions: float  # the whole launch
    dram_us: float  # compulsory bytes at the achievable DRAM bandwidth
    l2_us: float | None  # None without simulated traffic
    shared_us: float  # the busiest SM's LDS/STS wavefronts at one per clock
    data_path_us: float  # the same with the L1's global-access wavefronts, which share it
    issue_us: float  # its schedulers at the issue rate stalls and occupancy allow
    latency_us: float  # exposed global-load latency
    sm_us: float  # the busiest SM, composed
    sm_in_phase_us: float  # the same if each round's blocks waited for loads together
    issue_efficiency: float  # its warp-instructions per clock over 4, over sm_us
    floor_us: float  # compulsory bytes at the nominal DRAM bandwidth
    floor_achievable_us: float  # the same at the achievable bandwidth

    @property
    def est_us(self) -> float:
        return max(self.sm_us, self.dram_us, self.l2_us or 0.0)

    @property
    def est_in_phase_us(self) -> float:
        """The estimate if every round's blocks waited at the same time (no block's
        work hiding another's wait): the pessimistic end of the latency term."""
        return max(self.sm_in_phase_us, self.dram_us, self.l2_us or 0.0)

    @property
    def bound(self) -> str:
        """The largest term: a resource ("dram", "l2", "shared", "issue") or "latency"."""
        terms = {"dram": self.dram_us, "l2": self.l2_us or 0.0, "issue": self.issue_us,
                 "shared": self.shared_us, "latency": self.latency_us}
        return max(terms, key=lambda name: terms[name])

    def terms(self) -> dict[str, float | None]:
        return {"dram": self.dram_us, "l2": self.l2_us, "shared": self.shared_us,
                "issue": self.issue_us, "latency": self.latency_us, "sm": self.sm_us}


def round_time(phase: float, wait: float, blocks: int) -> float:
    """Cycles of a round of ``blocks`` blocks: ``phase`` cycles of scheduler and
    data-path work, while each block also waits ``wait`` cycles for global loads
    at a random phase against the others (see the module docstring)."""
    if wait <= 0:
        return phase
    if blocks <= 1:
        return phase + wait
    low, high = max(phase, wait + phase / blocks), phase + wait
    for _ in range(60):  # T - P - G (G / T)^(b-1) rises with T: bisect
        middle = (low + high) / 2
        if middle - phase - wait * (wait / middle) ** (blocks - 1) < 0:
            low = middle
        else:
            high = middle
    return high


def busiest_rounds(blocks: int, sms: int, resident: int) -> tuple[int, ...]:
    """Blocks running at once in each round on the SM dealt the most blocks."""
    dealt = -(-blocks // sms)
    resident = max(1, resident)
    full, tail = divmod(dealt, resident)
    return (resident,) * full + ((tail,) if tail else ())


def phases(static: KernelStatic, work: Execution) -> list[tuple[tuple, float, int]]:
    """(instructions, entries per warp, trips per entry) for the straight-line code
    and every loop body that runs."""
    out = [(static.straight_body(), 1.0, 1)]
    for index, (_, trips, entries) in enumerate(work.loops):
        if trips * entries > 0:
            out.append((static.own_body(index), entries, trips))
    return out


def loads_per_wait(ops) -> float:
    """Global loads waited for together: the loads over the waits for them, where a
    wait is a run of instructions waiting on scoreboards with global loads pending,
    with no new global load between them."""
    loads = waits = 0
    issued_since_wait = False
    pending: set[int] = set()
    for op in ops:
        waited = pending.intersection(op[1])
        if waited:
            waits += issued_since_wait
            issued_since_wait = False
            pending -= waited
        if op[4] == GLOBAL_LOAD:
            loads += 1
            issued_since_wait = True
            if op[2] >= 0:
                pending.add(op[2])
    return loads / waits if waits else float(max(1, loads))


def latencies(gpu: GpuModel, memory: Memory, loads: float) -> tuple[Latencies, Latencies]:
    """(issue runs: a global load at the L1 latency; latency runs: at L2 or DRAM).

    A wait is for the last of the ``loads`` global loads waited on together; each
    misses L2 with the probability that its bytes come from DRAM (the share of
    compulsory bytes in those loaded), so it lasts DRAM's latency unless all hit."""
    share = min(1.0, max(0.0, memory.dram_share_of_loads))
    any_miss = 1 - (1 - share) ** max(1.0, loads)
    far = gpu.l2_latency_cycles + any_miss * (gpu.dram_latency_cycles - gpu.l2_latency_cycles)
    near = Latencies(gpu.shared_latency_cycles, gpu.shared_latency_cycles,
                     gpu.other_latency_cycles)
    return near, Latencies(near.shared, far, near.other)


def estimate(
    gpu: GpuModel, static: KernelStatic, work: Execution, launch: Launch, memory: Memory
) -> Estimate:
    """The composed estimate for one launch (module docstring)."""
    shared = launch.shared_mem + static.resources.static_shared
    occ = occupancy(gpu, launch.threads_per_block, static.resources.registers, shared)
    clock = gpu.boost_clock_ghz * 1e3  # cycles per µs
    warps_per_block = -(-launch.threads_per_block // WARP_SIZE)
    rounds = busiest_rounds(launch.blocks, gpu.sms, occ.blocks_per_sm)
    global_wavefronts = (
        math.ceil(memory.load_sectors_per_request / 4 - 1e-9) or 1,
        math.ceil(memory.store_sectors_per_request / 4 - 1e-9) or 1,
    )
    near = latencies(gpu, memory, 1)[0]
    per_block_on_scheduler = -(-warps_per_block // SCHEDULERS)
    sm_cycles = in_phase_cycles = phase_cycles = issue_cycles = 0.0
    wait_per_block = wavefronts_per_warp = path_per_warp = 0.0
    parts = []
    for instructions, entries, trips in phases(static, work):
        ops = ops_for(instructions, (memory.shared_load_factor, memory.shared_store_factor),
                      global_wavefronts)
        # shared_us counts shared accesses; the scheduler model also queues the L1's
        # global wavefronts on the same path
        wavefronts_per_warp += entries * trips * sum(op[5] for op in ops if op[4] == SHARED)
        path_per_warp += entries * trips * sum(op[5] for op in ops)
        far = latencies(gpu, memory, loads_per_wait(ops))[1]
        alone = entry_cycles(ops, 1, 1, 1, near, False, trips)
        waited = entry_cycles(ops, 1, 1, 1, far, False, trips) - alone
        wait_per_block += entries * max(0.0, waited)
        parts.append((ops, entries, trips))
    for blocks in rounds:
        warps = blocks * warps_per_block
        per_scheduler = -(-warps // SCHEDULERS)
        schedulers = min(SCHEDULERS, warps)
        phase = issue = 0.0
        for ops, entries, trips in parts:
            args = (ops, per_scheduler, per_block_on_scheduler, schedulers, near)
            phase += entries * entry_cycles(*args, True, trips)
            issue += entries * entry_cycles(*args, False, trips)
        sm_cycles += round_time(phase, wait_per_block, blocks)
        in_phase_cycles += phase + wait_per_block
        phase_cycles += phase
        issue_cycles += issue
    dealt = sum(rounds)
    busiest_instructions = dealt * warps_per_block * work.instructions
    dram_us = memory.compulsory_bytes / (gpu.hbm_gb_per_s * gpu.achievable_dram_share * 1e3)
    l2_us = None
    if memory.sectors is not None:
        l2_us = memory.sectors * SECTOR_BYTES / (gpu.l2_gb_per_s * 1e3)
    per_wavefront = dealt * warps_per_block * 128 / gpu.shared_bytes_per_clock
    shared_cycles = per_wavefront * wavefronts_per_warp
    latency_cycles = sm_cycles - phase_cycles  # what the loads' waits add
    return Estimate(
        occupancy=occ,
        waves=launch.blocks / (max(1, occ.blocks_per_sm) * gpu.sms),
        rounds=rounds,
        warp_instructions=work.instructions * warps_per_block * launch.blocks,
        dram_us=dram_us,
        l2_us=l2_us,
        shared_us=shared_cycles / clock,
        data_path_us=per_wavefront * path_per_warp / clock,
        issue_us=issue_cycles / clock,
        latency_us=max(0.0, latency_cycles) / clock,
        sm_us=sm_cycles / clock,
        sm_in_phase_us=in_phase_cycles / clock,
        issue_efficiency=busiest_instructions / (SCHEDULERS * sm_cycles) if sm_cycles else 0.0,
        floor_us=memory.compulsory_bytes / (gpu.hbm_gb_per_s * 1e3),
        floor_achievable_us=dram_us,
    )

