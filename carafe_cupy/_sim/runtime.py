"""Run CUDA C++ kernel sources on the CPU.

A kernel module (CUDA C++ text without CUDA headers) is compiled by the host
C++ compiler with ``cuda_sim.h`` force-included, loaded with ctypes and
launched block by block; the threads of a block run as fibers (see
``cuda_sim_runtime.h``).

Environment:

* ``CARAFE_CUPY_SIM_ORDER``: how :func:`get_runtime` schedules a block's
  threads between barriers (see :class:`SimRuntime`): ``forward`` (default),
  ``reverse``, ``random``, ``warp-serial`` or ``random-warp``.
* ``CARAFE_CUPY_SIM_SEED``: seed for ``random`` and ``random-warp`` (default 0).
* ``CARAFE_CUPY_SIM_CACHE``: directory of compiled modules (default
  ``~/.cache/carafe_cupy/sim``); used only when private to the user (see
  ``_core.private_dirs``), otherwise a private temporary folder is.
* ``CARAFE_CUPY_SIM_STACK``: fiber stack size in bytes, 16384 to 67108864
  (default 65536).
* ``CARAFE_CUPY_SIM_ASAN=1`` (a boolean: 1/0, true/false, yes/no, on/off):
  build modules with AddressSanitizer. The Python process must start with
  libasan preloaded, e.g.::

      LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)" \\
      ASAN_OPTIONS=detect_leaks=0 \\
          CARAFE_CUPY_SIM_ASAN=1 python -m pytest ...

* ``CARAFE_CUPY_SIM_CXXFLAGS``: extra compiler flags (part of the cache key);
  ``-DCARAFE_SIM_UCONTEXT`` forces the portable ucontext fiber switch;
  ``-DCARAFE_SIM_WEAK_BARRIERS=1`` makes ``__syncthreads`` wait for the warp
  only and ``=2`` makes it and ``__syncwarp`` no-ops (do the tests notice?).
* ``CXX``: the C++ compiler (default ``g++``, then ``c++``); it needs C++20.

Compiled modules are cached as ``<module>-<sha256>.so`` (plus a ``.sha256``
file checked before loading); the scheduler (``cuda_sim_runtime.cpp``) is built
once per compiler and flag set as ``runtime-<sha256>.o`` and linked into each
module. :meth:`SimRuntime.compile_count` counts module builds only.

Inside :func:`carafe_cupy._sim.trace.tracing` launches run a separately cached
traced build of the module and report their memory traffic (see ``trace.py``).
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Any

import numpy as np

from .._core import env as _env
from . import build as _build
from . import trace as _trace
from .cache import get_module
from .common import SimulatorError

__all__ = ["ORDERS", "SimRuntime", "SimulatorError", "get_runtime"]

# name -> the scheduler's order code (enum Order in cuda_sim_runtime.cpp)
_ORDERS = {"forward": 0, "reverse": 1, "random": 2, "warp-serial": 3, "random-warp": 4}
ORDERS = tuple(_ORDERS)
_DEFAULT_STACK = 64 * 1024
# Up to 1024 fibers each map a stack: 64 MiB apiece is 64 GiB of address space.
MIN_STACK, MAX_STACK = 16 * 1024, 64 * 1024 * 1024
_ERR_LEN = 8192
_state_lock = threading.Lock()


def _marshal(args: tuple[Any, ...]) -> tuple[list[Any], Any, list[int]]:
    bufs = []
    sizes = []
    for i, a in enumerate(args):
        if not isinstance(a, np.generic):
            raise TypeError(
                f"kernel argument {i} must be a numpy scalar (np.uint64 for pointers, "
                f"np.int32, np.float32, ...), got {type(a).__name__}"
            )
        raw = a.tobytes()
        buf = ctypes.create_string_buffer(raw, max(len(raw), 8))
        bufs.append(buf)
        sizes.append(len(raw))
    ptrs = (ctypes.c_void_p * max(len(bufs), 1))(*[ctypes.addressof(b) for b in bufs])
    return bufs, ptrs, sizes


class SimRuntime:
    """Launches CUDA kernels on the CPU.

    ``order`` chooses how a block's threads are scheduled between barriers:

    * ``"forward"``, ``"reverse"``, ``"random"`` (shuffled with ``seed``): every
      thread that can run is resumed once per round, in thread-index order,
      its reverse or a shuffle, and runs to its next barrier or warp primitive;
      the warps advance together.
    * ``"warp-serial"``: one warp at a time. Warp 0's threads (lanes in order,
      meeting at ``__syncwarp``, shuffles and votes) run until all of them wait
      at the next block barrier or have exited, then warp 1's, and so on.
    * ``"random-warp"``: like ``"warp-serial"``, with the warps in an order
      shuffled with ``seed`` afresh after every block barrier.

    Running a kernel in more than one order exposes a missing ``__syncthreads``;
    the warp orders also expose one weakened to ``__syncwarp``. A given order
    and seed always schedule the same way.
    """

    def __init__(self, order: str = "forward", seed: int = 0, *, stack_size: int | None = None):
        if order not in _ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}; got {order!r}")
        self.order = order
        self.seed = int(seed)
        if stack_size is None:
            stack_size = _env.integer(
                "CARAFE_CUPY_SIM_STACK", _DEFAULT_STACK, MIN_STACK, MAX_STACK
            )
        elif not MIN_STACK <= int(stack_size) <= MAX_STACK:
            raise ValueError(
                f"stack_size must be between {MIN_STACK} and {MAX_STACK} bytes, got {stack_size}"
            )
        self.stack_size = int(stack_size)
        self._launches = 0
        self._lock = threading.Lock()

    def launch(
        self,
        module_name: str,
        source: str,
        kernel_name: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: tuple[Any, ...],
        shared_mem: int = 0,
    ) -> None:
        """Run ``kernel_name`` from ``source`` like ``cuLaunchKernel`` would."""
        grid = tuple(int(g) for g in grid)
        block = tuple(int(b) for b in block)
        if len(grid) != 3 or len(block) != 3:
            raise ValueError("grid and block must have three entries")
        if min(grid) < 1 or min(block) < 1:
            raise SimulatorError(f"invalid launch configuration grid={grid} block={block}")
        if max(grid) >= 2**32 or block[0] * block[1] * block[2] > 1024:
            raise SimulatorError(f"invalid launch configuration grid={grid} block={block}")
        session = _trace.active_session()
        mod = get_module(module_name, source, traced=session is not None)
        if kernel_name not in mod.kernels:
            raise SimulatorError(
                f"kernel {kernel_name!r} not found in module {module_name!r} "
                f'(extern "C" __global__ kernels found: {", ".join(mod.kernels) or "none"})'
            )
        bufs, ptrs, sizes = _marshal(tuple(args))
        expected = mod.param_sizes(kernel_name)
        if expected is not None:
            if len(expected) != len(sizes):
                raise SimulatorError(
                    f"kernel {kernel_name!r} takes {len(expected)} parameters, "
                    f"got {len(sizes)} arguments"
                )
            for i, (want, got) in enumerate(zip(expected, sizes)):
                if want != got:
                    raise SimulatorError(
                        f"kernel {kernel_name!r} parameter {i} is {want} bytes, but argument "
                        f"{i} is a {np.asarray(args[i]).dtype} ({got} bytes)"
                    )
        with self._lock:
            self._launches += 1
            launch_seed = (self.seed * 0x9E3779B97F4A7C15 + self._launches) & (2**64 - 1)
        err = ctypes.create_string_buffer(_ERR_LEN)
        g = (ctypes.c_uint * 3)(*grid)
        b = (ctypes.c_uint * 3)(*block)
        call = functools.partial(
            mod.launch_fn,
            kernel_name.encode(),
            g,
            b,
            int(shared_mem),
            ptrs,
            _ORDERS[self.order],
            launch_seed,
            self.stack_size,
            err,
            _ERR_LEN,
        )
        if session is None:
            rc = call()
        else:
            launch = (module_name, source, kernel_name, grid, block, int(shared_mem))
            rc = session.launch(mod.lib, mod.path, launch, call)
        del bufs
        if rc != 0:
            raise SimulatorError(f"module {module_name!r}: {err.value.decode(errors='replace')}")

    def compile_count(self) -> int:
        """Number of C++ compilations this process has run (all runtimes)."""
        return _build.compile_count()


_runtime: SimRuntime | None = None


def get_runtime() -> SimRuntime:
    """The process-wide runtime, configured from ``CARAFE_CUPY_SIM_ORDER``/``_SEED``."""
    global _runtime
    with _state_lock:
        if _runtime is None:
            order = _env.text("CARAFE_CUPY_SIM_ORDER").lower() or "forward"
            if order not in _ORDERS:
                raise ValueError(
                    f"CARAFE_CUPY_SIM_ORDER must be one of {', '.join(ORDERS)}; got {order!r}"
                )
            seed = _env.integer("CARAFE_CUPY_SIM_SEED", 0)
            _runtime = SimRuntime(order, seed)
        return _runtime
