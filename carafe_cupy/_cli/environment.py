"""The ``info`` lines on configuration: every environment variable the package
reads (``_core.env.VARIABLES``) with its value and effect, and the cache folders
with whether they are used (``_core.private_dirs``)."""

from __future__ import annotations

import os

from .._core import env as _env
from .._cpu import jit_cache as _jit_cache
from .._cpu import jit_choice as _jit_choice
from .._runtime import binaries as _binaries
from .._runtime import cupy_runtime as _cupy_runtime
from .._sim import cache as _sim_cache


def _folder_line(label: str, variable: str, folder: str, problem: str | None) -> str:
    if problem is None:
        state = "private" if os.path.isdir(folder) else "created private when first used"
        return f"{label} ({variable}): {folder} ({state})"
    return f"{label} ({variable}): {folder} NOT USED: {problem}"


def cache_lines() -> list[str]:
    """Where each cache is, and why it is not used where it is not (nothing is created)."""
    kernel_problem = _binaries.cache_problem()
    simulator_problem = _sim_cache.cache_problem()
    kernel = _folder_line(
        "kernel cache", _binaries.CACHE_VARIABLE, str(_binaries.cache_dir()), kernel_problem
    )
    simulator = _folder_line(
        "simulator cache", _sim_cache.CACHE_VARIABLE, str(_sim_cache.cache_dir()),
        simulator_problem,
    )
    cupy = _folder_line(
        "CuPy's kernel cache", "CUPY_CACHE_DIR", _cupy_runtime.cupy_cache_dir(),
        _cupy_runtime.cupy_cache_problem(),
    )
    if kernel_problem:
        kernel += "; binaries are kept in memory only"
    if simulator_problem:
        simulator += "; modules go to a private temporary folder removed at exit"
    cpu_problem = _jit_cache.cache_problem()
    cpu = _folder_line(
        "CPU kernel cache", _jit_cache.CACHE_VARIABLE, str(_jit_cache.configured_dir()),
        cpu_problem,
    )
    if cpu_problem:
        cpu += "; compiled CPU kernels go to a private temporary folder removed at exit"
    return [kernel, simulator, cupy, cpu]


def _problem(name: str) -> str | None:
    """Why the variable's value is refused, or None (checked the way it is read)."""
    readers = {
        "CARAFE_CUPY_SIMULATOR": lambda: _env.flag(name),
        "CARAFE_CUPY_SIM_ASAN": lambda: _env.flag(name),
        "CARAFE_CUPY_SIM_SEED": lambda: _env.integer(name, 0),
        "CARAFE_CUPY_SIM_STACK": lambda: _sim_stack(),
        "CARAFE_CUPY_SIM_CXXFLAGS": lambda: _env.words(name),
        "CXX": lambda: _env.words(name),
        "CARAFE_CUPY_CPU_KERNEL": lambda: _jit_choice.requested(),
        "CARAFE_CUPY_CPU_WARMUP": lambda: _env.flag(name),
    }
    try:
        readers.get(name, lambda: None)()
    except ValueError as error:
        return str(error)
    return None


def _sim_stack() -> int:
    from .._sim.runtime import MAX_STACK, MIN_STACK

    return _env.integer("CARAFE_CUPY_SIM_STACK", 0, MIN_STACK, MAX_STACK)


def environment_lines() -> list[str]:
    """One line per variable: its value (or unset), then what it does."""
    lines = ["environment variables read:"]
    for name, effect in _env.VARIABLES.items():
        value = os.environ.get(name)
        shown = "unset" if value is None else repr(value)
        problem = _problem(name)
        if problem:
            shown += f" (INVALID: {problem})"
        lines.append(f"  {name}={shown}: {effect}")
    return lines
