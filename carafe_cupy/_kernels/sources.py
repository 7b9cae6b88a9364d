"""The device code: where the ``.cu`` files are, their expanded source, and the
names of the NVRTC modules and kernels built from them. No CuPy, no planning."""

from __future__ import annotations

import functools
import re
from pathlib import Path

KERNEL_MODULE = "carafe"
SUPPORTED_DTYPES = ("float32", "float64", "float16", "bfloat16")
NVRTC_OPTIONS = ("-std=c++17",)
TILED_KERNEL_SIZES = (3, 5, 7)

_TILED_MODULE = re.compile(r"carafe_tiled_(float32|float64|float16|bfloat16)_k(\d+)")
_SCALAR_TYPES = {
    "float32": "float",
    "float64": "double",
    "float16": "half_bits",
    "bfloat16": "bfloat16_bits",
}
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)


class KernelCompileError(RuntimeError):
    """NVRTC (or the simulator's compiler) rejected a kernel source."""


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

    match = _TILED_MODULE.fullmatch(module_name)
    if match is None:
        return expand(f"{module_name}.cu")
    dtype, kernel_size = match.group(1), int(match.group(2))
    header = (
        f"#define CARAFE_TILED_SUFFIX {dtype}\n"
        f"#define CARAFE_TILED_SCALAR {_SCALAR_TYPES[dtype]}\n"
        f"#define CARAFE_TILED_K {kernel_size}\n"
        f"#define CARAFE_TILED_PAIRS {int(pairs_instantiated(dtype, kernel_size))}\n"
        f"#define CARAFE_TILED_FUSED {int(fused_instantiated(dtype, kernel_size))}\n"
    )
    return header + expand("carafe_tiled.cu")


def pairs_instantiated(dtype: str, kernel_size: int) -> bool:
    """Two pixels per thread doubles the mask registers: built for K <= 5, not fp64."""
    return dtype != "float64" and kernel_size <= 5


def fused_instantiated(dtype: str, kernel_size: int) -> bool:
    """fp64 with K >= 5 would spill in the fused kernels: it takes the unfused path."""
    return dtype != "float64" or kernel_size == 3


def tiled_module_name(dtype: str, kernel_size: int) -> str:
    return f"carafe_tiled_{dtype}_k{kernel_size}"


def all_module_names() -> list[str]:
    """Every NVRTC module: the general kernels, then one per (dtype, K) of tiled ones."""
    return [KERNEL_MODULE] + [
        tiled_module_name(dtype, k) for dtype in SUPPORTED_DTYPES for k in TILED_KERNEL_SIZES
    ]


def module_kernel_names(module_name: str) -> list[str]:
    if module_name == KERNEL_MODULE:
        return all_kernel_names()
    match = _TILED_MODULE.fullmatch(module_name)
    if match is None:
        raise ValueError(f"unknown kernel module {module_name!r}")
    dtype, k = match.group(1), int(match.group(2))
    names = [
        f"carafe_forward_tiled_k{k}_p1_{dtype}",
        f"carafe_backward_masks_tiled_k{k}_p1_{dtype}",
        f"carafe_backward_features_tiled_k{k}_{dtype}",
    ]
    if fused_instantiated(dtype, k):
        names += [
            f"carafe_fused_forward_k{k}_{dtype}",
            f"carafe_fused_backward_logits_k{k}_{dtype}",
            f"carafe_fused_backward_features_k{k}_{dtype}",
        ]
    if pairs_instantiated(dtype, k):
        names += [
            f"carafe_forward_tiled_k{k}_p2_{dtype}",
            f"carafe_backward_masks_tiled_k{k}_p2_{dtype}",
        ]
        if fused_instantiated(dtype, k):
            names.append(f"carafe_fused_forward_k{k}_p2_{dtype}")
    return names


def kernel_names(dtype: str) -> tuple[str, str, str]:
    """Forward, grad-features and grad-masks kernel names for a storage dtype."""
    return (
        f"carafe_forward_{dtype}",
        f"carafe_backward_features_{dtype}",
        f"carafe_backward_masks_{dtype}",
    )


def all_kernel_names() -> list[str]:
    return [name for dtype in SUPPORTED_DTYPES for name in kernel_names(dtype)]
