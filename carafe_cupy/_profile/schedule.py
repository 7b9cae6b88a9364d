"""One warp scheduler running a loop's SASS, driven by ptxas' control bits.

An SM has four schedulers; each issues at most one warp-instruction per clock
from the warps it holds. A warp may issue its next instruction once the stall
count of the previous one has passed and every scoreboard in its wait mask has
cleared (``control.py``). This module simulates one scheduler holding ``warps``
warps that each run a loop body for one entry's trips (or straight-line code
once), and returns the cycles that takes, for all of them together:

* fixed latencies come from the stall counts alone;
* a variable-latency instruction clears its write scoreboard after its
  latency (``Latencies``); a store clears its read scoreboard once its
  registers have been read;
* shared-memory and L1 accesses queue on the SM's data path, which moves one
  128-byte wavefront per clock for the whole SM (``pipe=True``): from one
  scheduler's view a wavefront takes as many clocks as there are schedulers
  with warps (the others are busy in the same way, as all run the same code);
* ``BAR.SYNC`` holds a warp until the other warps of its block on this
  scheduler have arrived;
* the warp that issued last issues again if it can, else the oldest ready warp
  (greedy-then-oldest).

Four schedulers run alike, so the SM takes the same cycles. Not modelled: the
issue rate of the pipes other than the data path (MUFU, 64-bit integer, FP64),
register-bank conflicts, instruction-cache misses, and other warps' global
loads delaying this one (the DRAM and L2 terms of ``compose.py`` hold those).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from . import control

OTHER, GLOBAL_LOAD, GLOBAL_STORE, SHARED, BARRIER = range(5)
_KINDS = {
    "other": OTHER, "global_load": GLOBAL_LOAD, "global_store": GLOBAL_STORE,
    "shared": SHARED, "barrier": BARRIER,
}


@dataclass(frozen=True)
class Latencies:
    """Cycles from issue until a result's scoreboard clears, when nothing queues."""

    shared: int  # LDS and an L1 hit: the data path's own latency
    global_load: float  # LDG: the L1-hit latency in issue runs, L2 or DRAM in latency runs
    other: int  # MUFU, conversions, LDC, S2R, shuffles, and registers read by stores


# one instruction as the scheduler sees it:
# (stall, waits, write scoreboard or -1, read scoreboard or -1, kind, wavefronts)
Op = tuple[int, tuple[int, ...], int, int, int, float]


def ops_for(instructions, shared_factor: tuple[float, float], global_wavefronts: tuple[float, float]
            ) -> tuple[Op, ...]:
    """The instructions (``static.Instruction`` with control bits) as scheduler ops.

    ``shared_factor``: wavefronts per request over the conflict-free minimum, for
    shared loads and stores (the tracer's bank conflicts); ``global_wavefronts``:
    data-path wavefronts per global load and store request (128-byte lines touched).
    """
    ops = []
    for instruction in instructions:
        ctl = instruction.control
        if ctl is None:
            raise ValueError(
                f"instruction {instruction.text!r} has no control bits: the SASS must come "
                "from nvdisasm -hex"
            )
        kind = _KINDS[control.kind(instruction.opcode)]
        wavefronts = 0.0
        if kind == SHARED:
            is_load = instruction.opcode.startswith(("LDS", "LDSM"))
            factor = shared_factor[0] if is_load else shared_factor[1]
            wavefronts = control.width_factor(instruction.opcode) * factor
        elif kind == GLOBAL_LOAD:
            wavefronts = global_wavefronts[0]
        elif kind == GLOBAL_STORE:
            wavefronts = global_wavefronts[1]
        write = -1 if ctl.write_scoreboard is None else ctl.write_scoreboard
        read = -1 if ctl.read_scoreboard is None else ctl.read_scoreboard
        ops.append((max(1, ctl.stall), ctl.waits, write, read, kind, wavefronts))
    return tuple(ops)


@functools.lru_cache(maxsize=4096)
def entry_cycles(
    ops: tuple[Op, ...],
    warps: int,
    warps_per_block: int,
    schedulers: int,
    latencies: Latencies,
    pipe: bool,
    trips: int,
) -> float:
    """Cycles for ``warps`` warps on one scheduler to run ``trips`` passes of
    ``ops`` each (one entry into a loop, or straight-line code with ``trips`` 1):
    simulated for up to 3 passes, which includes the first pass's start and the
    last one's drain; passes beyond that at the rate of the steady state (while
    every warp is still in the loop, from the first warp's end of its first pass
    to its end of its third).

    ``warps_per_block``: of this scheduler's warps, how many belong to one block
    (for barriers); ``schedulers``: schedulers with warps, which share the data path.
    """
    if trips <= 0 or not ops or warps < 1:
        return 0.0
    args = (ops, warps, warps_per_block, schedulers, latencies, pipe)
    simulated = min(trips, 3)
    end, rate = _run(*args, simulated)
    if trips == simulated:
        return end
    return end + (trips - simulated) * warps * len(ops) / rate


def _run(
    ops: tuple[Op, ...],
    warps: int,
    warps_per_block: int,
    schedulers: int,
    latencies: Latencies,
    pipe: bool,
    passes: int,
) -> float:
    """(Cycles until every warp has run ``passes`` passes of ``ops``, the issue rate
    from the first warp's end of pass 1 to its end of pass ``passes``)."""
    if not ops or warps < 1:
        return 0.0, 0.0
    count = len(ops)
    pc = [0] * warps
    passes_done = [0] * warps
    ready_at = [0.0] * warps
    scoreboards = [[0.0] * 6 for _ in range(warps)]
    waiting = [False] * warps
    arrivals: dict[int, list[float]] = {}
    pipe_free = 0.0
    share = schedulers if pipe else 0
    t = end = 0.0
    issued = 0
    marks: dict[int, tuple[float, int]] = {}  # pass -> (cycle, issued) when first ended
    last = 0
    running = warps
    active = [True] * warps
    while running:
        chosen = -1
        soonest = math.inf
        for w in (last, *range(warps)):
            if not active[w] or waiting[w]:
                continue
            op = ops[pc[w]]
            earliest = ready_at[w]
            board = scoreboards[w]
            for bit in op[1]:
                if board[bit] > earliest:
                    earliest = board[bit]
            if earliest <= t:
                chosen = w
                break
            if earliest < soonest:
                soonest = earliest
        if chosen < 0:
            if soonest == math.inf:  # every running warp waits at a barrier
                raise RuntimeError("scheduler model deadlocked at a barrier")
            t = soonest
            continue
        w = last = chosen
        stall, _, write, read, kind, wavefronts = ops[pc[w]]
        board = scoreboards[w]
        start = t
        if wavefronts and share:
            start = max(t, pipe_free)
            pipe_free = start + share * wavefronts
        if write >= 0:
            if kind == SHARED:
                done = start + latencies.shared + share * max(0.0, wavefronts - 1)
            elif kind == GLOBAL_LOAD:
                done = start + latencies.global_load + share * max(0.0, wavefronts - 1)
            else:
                done = t + latencies.other
            board[write] = max(board[write], done)
        if read >= 0:
            board[read] = max(board[read], start + latencies.other)
        ready_at[w] = t + stall
        if kind == BARRIER:
            block = w // warps_per_block
            members = [v for v in range(block * warps_per_block,
                                        min(warps, (block + 1) * warps_per_block)) if active[v]]
            arrived = arrivals.setdefault(block, [])
            arrived.append(t)
            waiting[w] = True
            if len(arrived) >= len(members):
                release = max(arrived)
                for v in members:
                    waiting[v] = False
                    ready_at[v] = max(ready_at[v], release + stall)
                del arrivals[block]
        pc[w] += 1
        if pc[w] == count:
            pc[w] = 0
            end = max(end, t + stall)
            passes_done[w] += 1
            marks.setdefault(passes_done[w], (t + stall, issued + 1))
            if passes_done[w] == passes:
                active[w] = False
                running -= 1
        issued += 1
        t += 1
    if passes == 1:
        return end, 0.0
    (start, before), (stop, after) = marks[1], marks[passes]
    return end, (after - before) / (stop - start) if stop > start else 0.0
