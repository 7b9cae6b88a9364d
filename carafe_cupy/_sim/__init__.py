"""CPU simulator for the project's CUDA kernels: common (errors, names), sites
and trace (the memory tracer), build (compiler and flags), cache (loading), and
runtime (launches). Imports nothing else of the package; see runtime.py."""

from .runtime import SimRuntime, SimulatorError, get_runtime

__all__ = ["SimRuntime", "SimulatorError", "get_runtime"]
