"""Memory-access tracing for simulated launches: what a GPU's memory system would see.

While :func:`tracing` is active, every launch the simulator runs (including
those made by the real launch code under ``CARAFE_CUPY_SIMULATOR=1``) is
traced and summarised in a :class:`LaunchTrace`::

    from carafe_cupy._sim.trace import tracing

    with tracing() as traces:
        carafe(features, masks, kernel_size=5, group_size=1, scale_factor=2)
    for t in traces:
        print(t.kernel, t.global_load.sectors_per_request, t.shared_load.conflicts_per_request)

How it works. A traced launch uses a separate build of the kernel module (its
own cache entry, ``<module>-traced-<hash>.so``; untraced launches never load
it). Its kernel code is compiled by GCC with ``-fsanitize=thread``
instrumentation, which calls ``__tsan_readN`` / ``__tsan_writeN`` before every
memory access; ``cuda_sim_trace.cpp`` and ``cuda_sim_trace_hooks.h`` provide
those hooks themselves (the thread sanitizer's runtime is never linked).
Vectorisation, store merging and scalar replacement of aggregates are turned
off in that build, so that each access a thread's code makes stays one access
of its own width (a ``float2`` load stays one 8-byte access), as on the GPU.
Each access is classified:

* **shared**: the module's ``__shared__`` statics or the launch's dynamic
  shared buffer (any writable static of the module counts, since GCC keeps
  the ``__shared__`` statics of function templates out of their section; a
  namespace-scope ``__device__`` variable, of which the project has none,
  would be counted as shared too);
* **ignored**: stacks (local variables, which live in registers or local
  memory on a GPU), the module's own code, constants and built-in variables
  (``threadIdx`` and friends), and the kernel argument buffers;
* **global**: everything else, i.e. the tensors the launch was given.

Accesses are grouped into **warp-level requests**: the n-th execution of one
access site (one instruction, found from the hook's return address) by the
lanes of a warp (linear thread id // 32), counting from the last point where
the whole block converged (``__syncthreads`` or the start of the block). For
each request:

* global: bytes asked for, and the distinct 32-byte **sectors** they touch
  (32 lanes reading consecutive floats: 4 sectors; float4: 16; a stride of 32
  bytes or more: 32). Sectors are counted from the start of the tensor (the
  pointer argument) an address lies in, as device allocations are 256-byte
  aligned while numpy's need not be;
* shared: **wavefronts** for 32 banks of 4 bytes. Accesses up to 4 bytes are
  served for the whole warp at once, 8-byte accesses per half warp and 16-byte
  accesses per quarter warp, as on NVIDIA GPUs since Volta; a phase takes as
  many wavefronts as the largest number of distinct 4-byte words any one bank
  holds (lanes reading the same word share it). ``bank_conflicts`` are the
  wavefronts beyond one per phase that has active lanes.

``unique_bytes`` counts the distinct global bytes read (loads) or written
(stores) during the launch: the traffic DRAM cannot avoid. Atomic
read-modify-writes count as stores. ``LaunchTrace.sites`` breaks the totals
down per access site, each with its inlined call chain from the traced
build's debug information (``addr2line``), so the loop behind a conflict or
a re-read is named.

Limits. Sites are instructions of the CPU build: GCC may keep a value in a
register or unroll a loop differently from NVCC, so counts of requests can
differ from the GPU's by such choices, while sectors and conflicts per request
follow the addresses. Calls to ``memset``/``memcpy`` with a run-time size are
not seen. Tracing cannot be combined with ``CARAFE_CUPY_SIM_ASAN=1`` (GCC cannot
instrument for both sanitizers at once). A traced launch runs about an order
of magnitude slower than an untraced one; ``max_blocks`` traces an evenly
spread sample of a big grid's blocks. By default the other blocks still run,
untraced, so outputs stay complete; ``run_all_blocks=False`` skips them (their
outputs are then left unwritten). Only launches the simulator runs are traced:
without ``CARAFE_CUPY_SIMULATOR=1`` the kernels run on the GPU and the list
stays empty.
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .common import SimulatorError
from .sites import Frame, symbolize

__all__ = ["AccessStats", "Frame", "LaunchTrace", "SiteStats", "tracing"]

_HERE = Path(__file__).resolve().parent
HOOKS_SOURCE = "cuda_sim_trace.cpp"
# Flags for the traced module's own code only (the hooks and the scheduler are
# built like any other module's).
MODULE_FLAGS = (
    "-fsanitize=thread",
    "--param=tsan-instrument-func-entry-exit=0",
    "-fno-tree-vectorize",
    "-fno-tree-slp-vectorize",
    "-fno-store-merging",
    "-fno-tree-sra",  # keeps float2 / float4 copies whole, as the GPU's vector accesses
    # DWARF 4: binutils' addr2line misnames files of GCC 12's DWARF 5 line tables.
    "-gdwarf-4",
    "-Wno-tsan",
)
# A hook the kernel code needs but the tracer lacks fails the build, not the load.
LINK_FLAGS = ("-Wl,--no-undefined",)
ASAN_REFUSAL = (
    "memory-access tracing cannot run with CARAFE_CUPY_SIM_ASAN=1: the tracer builds kernels "
    "with GCC's thread-sanitizer instrumentation, which GCC cannot combine with "
    "AddressSanitizer. Unset CARAFE_CUPY_SIM_ASAN (and the libasan LD_PRELOAD) while tracing."
)
_CATEGORIES = (("global", "load"), ("global", "store"), ("shared", "load"), ("shared", "store"))
_TOTALS = 26
_SITE_ROW = 9


@dataclass(frozen=True)
class AccessStats:
    """One memory space, one direction, one launch."""

    requests: int  # warp-level requests
    bytes: int  # bytes requested by all lanes
    sectors: int  # 32-byte sectors summed over requests (global) / wavefronts (shared)
    unique_bytes: int  # distinct bytes touched in the launch (global); 0 for shared
    bank_conflicts: int  # shared only: extra wavefronts beyond the minimum, summed

    @property
    def sectors_per_request(self) -> float:
        """Mean sectors (global) or wavefronts (shared) per request; 0 without requests."""
        return self.sectors / self.requests if self.requests else 0.0

    @property
    def conflicts_per_request(self) -> float:
        """Mean extra shared-memory wavefronts per request; 0 without requests."""
        return self.bank_conflicts / self.requests if self.requests else 0.0

    @property
    def bytes_per_request(self) -> float:
        return self.bytes / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class SiteStats:
    """The requests of one access site (one instruction of the traced build)."""

    space: str  # "global" or "shared"
    direction: str  # "load" or "store"
    access_bytes: int  # widest single-thread access at this site
    accesses: int  # thread-level accesses
    requests: int
    bytes: int
    sectors: int  # as in AccessStats
    unique_bytes: int  # distinct global bytes this site touched (0 for shared)
    bank_conflicts: int
    frames: tuple[Frame, ...]  # inlined call chain, innermost first; empty if unknown
    module_offset: int  # address of the instruction in the module file

    @property
    def location(self) -> str:
        """``file:line`` of the access itself."""
        return f"{self.frames[0].file}:{self.frames[0].line}" if self.frames else "?"

    @property
    def call_chain(self) -> str:
        """The inlined frames, innermost first: helper, loop, kernel."""
        return " <- ".join(map(str, self.frames)) or f"module offset {self.module_offset:#x}"


@dataclass(frozen=True)
class LaunchTrace:
    """Memory traffic of one simulated launch (of the traced blocks)."""

    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int  # dynamic shared memory of the launch
    global_load: AccessStats
    global_store: AccessStats
    shared_load: AccessStats
    shared_store: AccessStats
    blocks_traced: int  # <= blocks_total when sampling
    blocks_total: int
    module: str
    sites: tuple[SiteStats, ...]  # per access site, in source order


class _Session:
    def __init__(self, max_blocks: int | None, run_all_blocks: bool) -> None:
        self.max_blocks = max_blocks
        self.run_all_blocks = run_all_blocks
        self.traces: list[LaunchTrace] = []

    def sample(self, total: int) -> list[int]:
        """Evenly spread linear block ids to trace; [] means all of them."""
        m = self.max_blocks
        if m is None or m >= total:
            return []
        return sorted({(2 * i + 1) * total // (2 * m) for i in range(m)})

    def launch(
        self,
        lib: ctypes.CDLL,
        path: str,
        launch: tuple[str, str, str, tuple[int, ...], tuple[int, ...], int],
        call: Callable[[], int],
    ) -> int:
        """Run ``call`` (the module's launch) traced; record a LaunchTrace on success."""
        module, source, kernel, grid, block, shared = launch
        total = grid[0] * grid[1] * grid[2]
        sample = self.sample(total)
        fns = _functions(lib)
        with _launch_lock:
            arr = (ctypes.c_ulonglong * max(len(sample), 1))(*sample)
            fns.arm(arr, len(sample), int(self.run_all_blocks))
            rc = call()
            if rc != 0:
                return rc
            totals = (ctypes.c_ulonglong * _TOTALS)()
            fns.totals(totals, _TOTALS)
            rows = fns.sites(None, 0)
            buf = (ctypes.c_ulonglong * max(rows * _SITE_ROW, 1))()
            fns.sites(buf, rows)
        if totals[25]:
            raise SimulatorError(
                f"tracing kernel {kernel!r}: more than 2**26 memory accesses between two "
                "barriers of one block; trace a smaller problem"
            )
        stats = [
            AccessStats(
                requests=int(totals[6 * c]),
                bytes=int(totals[6 * c + 1]),
                sectors=int(totals[6 * c + 2]),
                unique_bytes=int(totals[6 * c + 3]),
                bank_conflicts=int(totals[6 * c + 4]),
            )
            for c in range(4)
        ]
        raw = [tuple(int(v) for v in buf[r * _SITE_ROW : (r + 1) * _SITE_ROW]) for r in range(rows)]
        frames = symbolize(path, module, source, sorted({row[0] for row in raw}))
        sites = tuple(
            sorted(
                (
                    SiteStats(
                        space=_CATEGORIES[row[1]][0],
                        direction=_CATEGORIES[row[1]][1],
                        access_bytes=row[2],
                        requests=row[3],
                        bytes=row[4],
                        sectors=row[5],
                        bank_conflicts=row[6],
                        accesses=row[7],
                        unique_bytes=row[8],
                        frames=frames.get(row[0], ()),
                        module_offset=row[0],
                    )
                    for row in raw
                ),
                key=lambda s: (
                    tuple((f.file, f.line) for f in reversed(s.frames)),
                    s.module_offset,
                ),
            )
        )
        trace = LaunchTrace(
            kernel=kernel,
            grid=(grid[0], grid[1], grid[2]),
            block=(block[0], block[1], block[2]),
            shared_bytes=int(shared),
            global_load=stats[0],
            global_store=stats[1],
            shared_load=stats[2],
            shared_store=stats[3],
            blocks_traced=int(totals[24]),
            blocks_total=total,
            module=module,
            sites=sites,
        )
        with _sessions_lock:
            for session in _sessions:
                session.traces.append(trace)
        return rc


_sessions: list[_Session] = []
_sessions_lock = threading.Lock()
_launch_lock = threading.Lock()


@contextmanager
def tracing(
    max_blocks: int | None = None, *, run_all_blocks: bool = True
) -> Iterator[list[LaunchTrace]]:
    """Trace every simulated launch while active; yields the list the traces go to.

    ``max_blocks`` traces at most that many evenly spread blocks of each launch
    (``LaunchTrace.blocks_traced`` says how many were). With
    ``run_all_blocks=False`` the untraced blocks are skipped instead of run, which
    is faster but leaves their outputs unwritten. Tracing is process-wide; nested
    ``tracing`` blocks each receive every trace, sampled as the innermost asks.
    """
    if max_blocks is not None and (
        isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or max_blocks < 1
    ):
        raise ValueError(f"max_blocks must be a positive int or None, got {max_blocks!r}")
    session = _Session(max_blocks, bool(run_all_blocks))
    with _sessions_lock:
        _sessions.append(session)
    try:
        yield session.traces
    finally:
        with _sessions_lock:
            _sessions.remove(session)


def active_session() -> _Session | None:
    """The innermost active tracing session, or None (the untraced fast path)."""
    return _sessions[-1] if _sessions else None


def compile_module(
    compiler: list[str],
    shim: list[str],
    source: Path,
    objects: list[Path],
    out: Path,
    run: Callable[[list[str]], None],
) -> None:
    """Build a traced module: instrument the kernel code only, link without libtsan."""
    obj = source.with_suffix(".o")
    run([*compiler, *MODULE_FLAGS, *shim, "-c", str(source), "-o", str(obj)])
    run([*compiler, "-shared", str(obj), *map(str, objects), "-o", str(out), *LINK_FLAGS])


def build_digest() -> str:
    """Everything the traced build adds to a module's cache key."""
    h = hashlib.sha256("\0".join(MODULE_FLAGS + LINK_FLAGS).encode())
    h.update((_HERE / HOOKS_SOURCE).read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class _Functions:
    arm: Callable[..., int]
    totals: Callable[..., int]
    sites: Callable[..., int]


def _functions(lib: ctypes.CDLL) -> _Functions:
    # Kept on the library object: an id() could be reused once a module is dropped.
    fns = lib.__dict__.get("_carafe_trace_functions")
    if fns is None:
        u64p = ctypes.POINTER(ctypes.c_ulonglong)
        arm = lib.carafe_sim_trace_arm
        arm.argtypes = [u64p, ctypes.c_ulonglong, ctypes.c_int]
        totals = lib.carafe_sim_trace_totals
        totals.argtypes = [u64p, ctypes.c_int]
        sites = lib.carafe_sim_trace_sites
        sites.argtypes = [u64p, ctypes.c_int]
        for fn in (arm, totals, sites):
            fn.restype = ctypes.c_int
        fns = lib.__dict__["_carafe_trace_functions"] = _Functions(arm, totals, sites)
    return fns
