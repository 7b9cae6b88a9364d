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
before any kernel is decorated, so a kernel module needs nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
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


def kernel(function: Callable) -> Any:
    """A kernel entry point: compiled on its first call for the argument types
    given, cached on disk, and run without the GIL."""
    return njit(**KERNEL_OPTIONS)(function)


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
