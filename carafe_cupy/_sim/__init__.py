"""CPU simulator for the project's CUDA kernels (see runtime.py)."""

from .runtime import SimRuntime, SimulatorError, get_runtime

__all__ = ["SimRuntime", "SimulatorError", "get_runtime"]
