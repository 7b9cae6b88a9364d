"""The package's own exceptions: no torch, no CuPy."""

from __future__ import annotations


class KernelsUnavailableError(RuntimeError):
    """The CUDA kernels cannot run here (no CuPy, no NVRTC, or a GPU NVRTC cannot target)."""


class KernelCompileError(RuntimeError):
    """NVRTC (or the simulator's compiler) rejected a kernel source."""
