"""Every environment variable the package reads, and the one way each kind is parsed.

A value that cannot be parsed is a ValueError naming the variable, what it
accepts and what it holds; an empty value (or only spaces) counts as unset.
``VARIABLES`` lists them all with their effect, for ``python -m carafe_cupy info``
(a test scans the source so that none is left out).
"""

from __future__ import annotations

import os
import shlex

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
    value = text(name).lower()
    if value in _TRUE:
        return True
    if value in _FALSE or not value:
        return False
    raise ValueError(
        f"environment variable {name} must be a boolean (1/0, true/false, yes/no, on/off), "
        f"got {os.environ[name]!r}"
    )


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
