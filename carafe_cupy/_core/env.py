"""Every environment variable the package reads, and the one way each kind is parsed.

A value that cannot be parsed is a ValueError naming the variable, what it
accepts and what it holds; an empty value (or only spaces) counts as unset.
``VARIABLES`` lists them all with their effect, for ``python -m carafe_cupy info``
(a test scans the source so that none is left out).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from typing import TypeVar

# name -> what it does (shown by `python -m carafe_cupy info`)
VARIABLES: dict[str, str] = {
    "CARAFE_CUPY_SIMULATOR": "boolean: run the CUDA kernels on the CPU simulator",
    "CARAFE_CUPY_SIM_ORDER": (
        "simulator thread order between barriers: forward (default), reverse, random, "
        "warp-serial, random-warp"
    ),
    "CARAFE_CUPY_SIM_SEED": "integer seed of the random simulator orders (default 0)",
    "CARAFE_CUPY_SIM_STACK": "simulator fiber stack in bytes, 16384 to 67108864 (default 65536)",
    "CARAFE_CUPY_SIM_ASAN": "boolean: build simulator modules with AddressSanitizer",
    "CARAFE_CUPY_SIM_CXXFLAGS": "extra compiler flags for simulator modules (shell words)",
    "CARAFE_CUPY_SIM_CACHE": (
        "folder of compiled simulator modules (default ~/.cache/carafe_cupy/sim); "
        "must be private to the user"
    ),
    "CXX": "C++ compiler for the simulator, shell words (default g++, then c++)",
    "CARAFE_CUPY_KERNEL_VARIANT": "force the general, tiled or tiled_pair kernels (default auto)",
    "CARAFE_CUPY_KERNEL_CACHE": (
        "folder of compiled kernel binaries (default ~/.cache/carafe_cupy/kernels); "
        "must be private to the user"
    ),
    "CUPY_CACHE_DIR": (
        "CuPy's own kernel cache (default ~/.cupy/kernel_cache); replaced by a private "
        "temporary folder for the process when it is unusable or not private"
    ),
    "CARAFE_CUPY_CPU_KERNEL": (
        "the path torch CPU tensors take: auto (default: the kernels Numba compiles where "
        "numba imports, else pure PyTorch), numba, or torch"
    ),
    "CARAFE_CUPY_CPU_CACHE": (
        "folder of the compiled CPU kernels (default ~/.cache/carafe_cupy/cpu); must be "
        "private to the user; a NUMBA_CACHE_DIR you set takes precedence"
    ),
    "CARAFE_CUPY_CPU_WARMUP": (
        "boolean: load or compile the CPU kernels on a background thread when the package "
        "is imported (default off)"
    ),
    "NUMBA_DISABLE_JIT": (
        "Numba's own switch; on, torch CPU tensors take the pure-PyTorch path and no "
        "warm-up starts"
    ),
    "CARAFE_CUPY_PROFILE_CACHE": (
        "the cost model's compile cache (default ~/.cache/carafe_cupy/profile)"
    ),
    "CARAFE_CUPY_NVDISASM": (
        "the nvdisasm the cost model runs (default: PATH, then the NVIDIA wheel)"
    ),
}

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def text(name: str) -> str:
    """The variable's value without surrounding spaces; "" when unset."""
    return os.environ.get(name, "").strip()


def flag(name: str) -> bool:
    """A boolean: 1/0, true/false, yes/no, on/off (any case); unset or empty is False."""
    return boolean(name, os.environ.get(name, ""))


def boolean(name: str, value: str) -> bool:
    """``value`` of the variable ``name`` as :func:`flag` reads it (a parser for :func:`reader`)."""
    folded = value.strip().lower()
    if folded in _TRUE:
        return True
    if folded in _FALSE or not folded:
        return False
    raise ValueError(
        f"environment variable {name} must be a boolean (1/0, true/false, yes/no, on/off), "
        f"got {value!r}"
    )


# Some variables are read on every call and every launch (the simulator switch, the
# kernel variant). os.environ.get encodes the name each time, and for an unset name
# raises and catches a KeyError; a reader looks its encoded name up in the mapping
# behind os.environ instead (what os.environ.get reads too) and keeps the last value
# it parsed: an unchanged variable is the very object read last time. A replaced
# os.environ (a test's stand-in) is read the ordinary way.
_ENVIRON = os.environ
_STORE: dict | None = getattr(_ENVIRON, "_data", None)
_UNREAD = object()
Parsed = TypeVar("Parsed")


def reader(name: str, parse: Callable[[str, str], Parsed]) -> Callable[[], Parsed]:
    """A function returning ``parse(name, value)`` for the variable's value as it is
    set now ("" when unset), for the reads made on every call; parsed again only when
    the value changed, and a value ``parse`` refuses raises every time."""
    encoded = _ENVIRON.encodekey(name) if _STORE is not None else None
    last = [(_UNREAD, None)]  # (the value as stored, what it parsed to), replaced whole

    def read() -> Parsed:
        environ = os.environ
        if environ is _ENVIRON and _STORE is not None:
            stored = _STORE.get(encoded)  # as os.environ stores it; None when unset
        else:
            stored = environ.get(name)
        seen, result = last[0]
        if stored is not seen:
            if stored is None:
                value = ""
            elif isinstance(stored, str):
                value = stored
            else:
                value = _ENVIRON.decodevalue(stored)
            result = parse(name, value)
            last[0] = (stored, result)
        return result

    return read


def integer(name: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
    """A decimal integer in [minimum, maximum]; ``default`` when unset or empty."""
    value = text(name)
    if not value:
        return default
    try:
        number = int(value, 10)
    except ValueError:
        raise ValueError(
            f"environment variable {name} must be an integer, got {os.environ[name]!r}"
        ) from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError(
            f"environment variable {name} must be between {minimum} and {maximum}, got {number}"
        )
    return number


def words(name: str) -> list[str]:
    """Shell words (quotes as in a shell); [] when unset or empty."""
    value = text(name)
    try:
        return shlex.split(value)
    except ValueError as error:
        raise ValueError(
            f"environment variable {name} must be shell words with balanced quotes, "
            f"got {os.environ[name]!r} ({error})"
        ) from None
