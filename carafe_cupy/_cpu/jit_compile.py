"""How the CPU kernels are compiled: the decorators every kernel module uses.

``@kernel`` marks a function called from Python (``jit_dispatch``); ``@helper`` one
only kernels call. A helper is compiled once per signature, without the wrappers
Python or ctypes would need, and marked ``alwaysinline`` for LLVM (``forceinline``),
so every kernel gets its own inlined copy as with Numba's ``inline="always"``, but
without Numba copying and retyping the helper's IR at every call site, which costs
compile time, most of all for helpers several kernels share. The register blocks
of the forward and the backward use ``@numba_inlined_helper`` (Numba's inlining),
with which they were written and checked in the assembly.
``OVERLOAD_OPTIONS`` is for the ``@overload`` implementations (``jit_dtypes``).

Importing this module puts the package's disk cache in place (``jit_cache``)
before any kernel is decorated, so a kernel module needs nothing else. A kernel
loads from that cache without Numba's compiler set-up (``jit_cache.
enable_kernel_cache``), and Python's cyclic garbage collector is paused while a
kernel is compiled or loaded (``collector_paused``): Numba makes hundreds of
thousands of short-lived objects then, and with torch's in memory each full
collection walks millions; that took 0.1 s of a 0.3 s load and about 0.5 s of a
2.5 s compile. Reference counting still frees everything as usual.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

from numba import njit

from . import jit_cache

jit_cache.register()  # Numba picks a function's cache folder when it is decorated

# no_cfunc_wrapper: the ctypes-callable copy of each function is never used
KERNEL_OPTIONS: dict[str, Any] = {"cache": True, "nogil": True, "no_cfunc_wrapper": True}
HELPER_OPTIONS: dict[str, Any] = {
    "cache": True,
    "forceinline": True,
    "no_cpython_wrapper": True,
    "no_cfunc_wrapper": True,
}
NUMBA_INLINED_OPTIONS: dict[str, Any] = {"cache": True, "inline": "always"}
# @overload(..., jit_options=OVERLOAD_OPTIONS): overloads have no Python wrapper anyway
OVERLOAD_OPTIONS: dict[str, Any] = {"forceinline": True, "no_cfunc_wrapper": True}


_collector_lock = threading.Lock()
_collector = {"pauses": 0, "was_enabled": False}


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block, on again after the last
    of any overlapping blocks (of any thread) if it was on before the first."""
    with _collector_lock:
        if _collector["pauses"] == 0:
            _collector["was_enabled"] = gc.isenabled()
            gc.disable()
        _collector["pauses"] += 1
    try:
        yield
    finally:
        with _collector_lock:
            if _collector["pauses"] > 0:  # 0 in a child forked during the block
                _collector["pauses"] -= 1
                if _collector["pauses"] == 0 and _collector["was_enabled"]:
                    gc.enable()


def _after_fork_in_child() -> None:
    # the threads that paused the collector are not in the child: restore it here
    global _collector_lock
    _collector_lock = threading.Lock()
    if _collector["pauses"] > 0:
        _collector["pauses"] = 0
        if _collector["was_enabled"]:
            gc.enable()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _compiled_with_collector_paused(dispatcher: Any) -> Any:
    """The dispatcher, its compile (or cache load, which Numba does in the same
    method, called on the first call for new argument types) under
    collector_paused."""
    compile_types = dispatcher.compile

    @wraps(compile_types)
    def compile(sig: Any) -> Any:
        with collector_paused():
            return compile_types(sig)

    dispatcher.compile = compile
    return dispatcher


def kernel(function: Callable) -> Any:
    """A kernel entry point: compiled on its first call for the argument types
    given, cached on disk, and run without the GIL."""
    dispatcher = njit(**{**KERNEL_OPTIONS, "cache": False})(function)
    if not hasattr(dispatcher, "py_func"):  # NUMBA_DISABLE_JIT: the Python function
        return dispatcher
    jit_cache.enable_kernel_cache(dispatcher)  # what cache=True does, with a lighter load
    return _compiled_with_collector_paused(dispatcher)


def helper(function: Callable) -> Any:
    """A function only kernels call, inlined into each of them by LLVM."""
    return njit(**HELPER_OPTIONS)(function)


def numba_inlined_helper(function: Callable) -> Any:
    """A helper that Numba inlines into its callers' IR (``inline="always"``): typed
    anew at every call site, which costs compile time, but for the innermost loops
    of a kernel it can give LLVM code it optimises better; worth it only where a
    benchmark or the assembly shows it (the register blocks of the forward and
    the backward)."""
    return njit(**NUMBA_INLINED_OPTIONS)(function)
