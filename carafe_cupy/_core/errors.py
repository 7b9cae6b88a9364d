"""The package's own exceptions: no torch, no CuPy."""

from __future__ import annotations


class KernelsUnavailableError(RuntimeError):
    """The CUDA kernels cannot run here (no CuPy, no NVRTC, or a GPU NVRTC cannot target)."""


class KernelCompileError(RuntimeError):
    """NVRTC (or the simulator's compiler) rejected a kernel source."""


def install_hint(extra: str) -> str:
    """How to install an extra: from the repository, since the package is on no index."""
    return f'`pip install ".[{extra}]"` in a clone of the carafe_cupy repository'


# PyTorch's CPU-only build comes from PyTorch's own wheel index; its "Get started"
# selector gives the exact pip line for each platform.
CPU_TORCH_HINT = (
    "PyTorch's CPU-only build, with the pip command the \"Get started\" selector on the "
    "PyTorch website gives for Compute Platform: CPU"
)
