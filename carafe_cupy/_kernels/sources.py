"""The device code: where the ``.cu`` files are, their expanded source, and the
names of the NVRTC modules and kernels built from them. No CuPy, no planning."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from .._core.errors import KernelCompileError  # noqa: F401 (re-exported)
from .._core.geometry import SUPPORTED_DTYPES
from .constants import defines
from .names import (  # noqa: F401 (re-exported)
    KERNEL_MODULE,
    TILED_KERNEL_SIZES,
    KernelId,
    fused_instantiated,
    general_kernels,
    pairs_instantiated,
    parse_tiled_module,
    tiled_kernels,
    tiled_module_name,
)

# Every NVRTC option the kernels are compiled with, wherever they are compiled (the
# runtime, the offline checks, the cost model), plus the target (``_runtime.binaries``).
# IEEE fp32: subnormals kept (no flush to zero), divisions and square roots rounded
# correctly, as in the simulator and in torch; FMA contraction on (NVRTC's default,
# which the simulator does not model). Line info and ptxas' report change no code.
NVRTC_OPTIONS = (
    "-std=c++17",
    "-ftz=false",
    "-prec-div=true",
    "-prec-sqrt=true",
    "-fmad=true",
    "--generate-line-info",
    "-Xptxas=-v",
)
_SCALAR_TYPES = {
    "float32": "float",
    "float64": "double",
    "float16": "half_bits",
    "bfloat16": "bfloat16_bits",
}
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)


def cuda_source_dir() -> Path:
    """Where the ``.cu`` files are: inside the installed package, or the repository."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "cuda_src"
    if packaged.is_dir():
        return packaged
    return package.parent / "cuda_src"


@functools.cache
def kernel_source(module_name: str = KERNEL_MODULE) -> str:
    """The module's source with local ``#include "..."`` expanded.

    Expanding here keeps the compiler free of include paths and makes the
    source text (CuPy's disk-cache key) change whenever a header does.
    """
    directory = cuda_source_dir()
    included: set[str] = set()

    def expand(name: str) -> str:
        if name in included:
            return ""
        included.add(name)
        text = (directory / name).read_text()
        text = text.replace("#pragma once", "")
        return _INCLUDE.sub(lambda match: expand(match.group(1)), text)

    tiled = parse_tiled_module(module_name)
    if tiled is None:
        return defines() + expand(f"{module_name}.cu")
    dtype, kernel_size = tiled
    header = defines() + (
        f"#define CARAFE_TILED_SUFFIX {dtype}\n"
        f"#define CARAFE_TILED_SCALAR {_SCALAR_TYPES[dtype]}\n"
        f"#define CARAFE_TILED_K {kernel_size}\n"
        f"#define CARAFE_TILED_PAIRS {int(pairs_instantiated(dtype, kernel_size))}\n"
        f"#define CARAFE_TILED_FUSED {int(fused_instantiated(dtype, kernel_size))}\n"
    )
    return header + expand("carafe_tiled.cu")


def all_module_names() -> list[str]:
    """Every NVRTC module: the general kernels, then one per (dtype, K) of tiled ones."""
    return [KERNEL_MODULE] + [
        tiled_module_name(dtype, k) for dtype in SUPPORTED_DTYPES for k in TILED_KERNEL_SIZES
    ]


def module_kernels(module_name: str) -> list[KernelId]:
    """The kernels a module defines."""
    if module_name == KERNEL_MODULE:
        return [kernel for dtype in SUPPORTED_DTYPES for kernel in general_kernels(dtype)]
    tiled = parse_tiled_module(module_name)
    if tiled is None:
        raise ValueError(f"unknown kernel module {module_name!r}")
    return tiled_kernels(*tiled)


def module_kernel_names(module_name: str) -> list[str]:
    return [kernel.name for kernel in module_kernels(module_name)]


def kernel_names(dtype: str) -> tuple[str, ...]:
    """Forward, grad_features and grad_masks of the general module, for a dtype."""
    return tuple(kernel.name for kernel in general_kernels(dtype))


def all_kernel_names() -> list[str]:
    return module_kernel_names(KERNEL_MODULE)
