"""Arrays from any library, through DLPack, for the array front end.

An input with ``__dlpack__`` and ``__dlpack_device__`` (a JAX array, a torch
tensor, anything implementing the protocol) is imported zero-copy:

- in CUDA memory, as a cupy array on its own device. The import goes through
  ``cupy.from_dlpack`` with the array's device current, so the producer is handed
  CuPy's current stream on that device and orders its pending work before it (the
  DLPack stream protocol); the kernels then run on that stream.
- in host memory, under the simulator, as a numpy array the simulated kernels read;
- in host memory otherwise (or in a dtype numpy lacks, bfloat16), not here: the
  caller sends it to the PyTorch CPU path (``_array.via_torch``).

Results go back through the input library's own ``from_dlpack`` (which passes
its stream the same way); an object with nothing but the protocol gets numpy
arrays on the CPU and cupy arrays on CUDA. No torch and no CuPy imports here.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .._core.errors import CPU_TORCH_HINT
from .._runtime import launch as _launch
from . import refs as _arrays
from . import via_torch as _via_torch

# DLPack device types (dlpack.h)
_CPU, _CUDA, _CUDA_HOST, _CUDA_MANAGED = 1, 2, 3, 13
# What np.from_dlpack raises for a dtype numpy has no DLPack code for (bfloat16).
_NUMPY_IMPORT_ERRORS = (BufferError, RuntimeError, TypeError, ValueError)


def is_dlpack_array(value: Any) -> bool:
    return hasattr(value, "__dlpack__") and hasattr(value, "__dlpack_device__")


def is_kernel_array(value: Any) -> bool:
    """An array the launch code reads directly: cupy, or numpy under the simulator."""
    return _arrays.is_cupy_array(value) or _arrays.is_simulated_array(value)


def is_jax_tracer(value: Any) -> bool:
    """A value being traced by a JAX transform (jit, grad, vmap, ...). Read from the
    value's classes, so JAX is never imported to answer."""
    return any(
        cls.__name__ == "Tracer" and cls.__module__.split(".")[0] == "jax"
        for cls in type(value).__mro__
    )


def describe(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__name__}"


def refuse_tracers(where: str, **values: Any) -> None:
    """A TypeError for JAX tracers, which hold no data to run on."""
    for name, value in values.items():
        if is_jax_tracer(value):
            raise TypeError(
                f"{where}: {name} is a JAX tracer ({describe(value)}), so this call is inside "
                "a JAX transform (jax.jit, jax.grad, jax.vmap, ...). carafe_cupy runs eagerly, "
                "on concrete arrays, outside JAX transforms: call it outside them (on the CPU, "
                "docs/usage.md shows how to wrap it in jax.pure_callback and jax.custom_vjp)."
            )


@contextlib.contextmanager
def on_device(array: Any) -> Iterator[None]:
    """Make the array's device CuPy's current one (nothing to do for numpy)."""
    if isinstance(array, np.ndarray):
        yield
        return
    with _arrays.cupy_module().cuda.Device(_arrays.array_device(array)):
        yield


def _host_import(where: str, name: str, value: Any) -> Any:
    """A host-memory array as numpy for the simulator, or None where torch takes it."""
    if _launch.simulator_enabled():
        try:
            return np.from_dlpack(value)
        except _NUMPY_IMPORT_ERRORS as error:  # bfloat16: torch has it, numpy not
            if _via_torch.torch_installed():
                return None
            raise TypeError(
                f"{where}: {name} ({describe(value)}) cannot be read as a numpy array "
                f"({error}); install torch to run it through PyTorch ({CPU_TORCH_HINT})"
            ) from error
    if _via_torch.torch_installed():
        return None
    raise TypeError(
        f"{where}: {name} ({describe(value)}) is in CPU memory, and without torch nothing "
        f"here runs on the CPU. Install torch for the PyTorch CPU path ({CPU_TORCH_HINT}), "
        "pass arrays on a CUDA device, or set CARAFE_CUPY_SIMULATOR=1 to run the kernels on "
        "the CPU."
    )


def _importer(where: str, name: str, value: Any) -> Any:
    device_type, device_id = (int(part) for part in value.__dlpack_device__())
    if device_type in (_CUDA, _CUDA_MANAGED):
        cupy = _arrays.cupy_module()
        with cupy.cuda.Device(device_id):
            return cupy.from_dlpack(value)
    if device_type in (_CPU, _CUDA_HOST):
        return _host_import(where, name, value)
    raise TypeError(
        f"{where}: {name} ({describe(value)}) is on DLPack device {device_type}; the kernels "
        "need CUDA memory and the PyTorch path host memory"
    )


def _as_numpy_or_cupy(where: str) -> Callable[[Any], Any]:
    """Results for inputs whose library has no from_dlpack: numpy or cupy arrays."""

    def give_back(result: Any) -> Any:
        if isinstance(result, np.ndarray) or _arrays.is_cupy_array(result):
            return result
        try:  # a torch CPU tensor from the PyTorch path
            return np.from_dlpack(result)
        except _NUMPY_IMPORT_ERRORS as error:
            raise TypeError(
                f"{where}: the result ({result.dtype}) has no numpy dtype, and the inputs' "
                "library has no from_dlpack to take it back; pass float32, float64 or float16"
            ) from error

    return give_back


def _exporter(where: str, value: Any) -> Callable[[Any], Any]:
    """``from_dlpack`` of the library the value comes from."""
    if hasattr(value, "__array_namespace__"):
        namespace = value.__array_namespace__()
    else:
        namespace = sys.modules.get(type(value).__module__.split(".")[0])
    from_dlpack = getattr(namespace, "from_dlpack", None)
    return _as_numpy_or_cupy(where) if from_dlpack is None else from_dlpack


def _check_one_kind(where: str, **values: Any) -> None:
    refuse_tracers(where, **values)
    kinds = {type(value) for value in values.values()}
    if len(kinds) > 1:
        listing = ", ".join(f"{name} is {describe(value)}" for name, value in values.items())
        raise TypeError(f"{where}: inputs must all be arrays of one kind; {listing}")
    for name, value in values.items():
        if not is_dlpack_array(value):
            raise TypeError(
                f"{where}: {name} must be a cupy.ndarray or an array with __dlpack__ and "
                f"__dlpack_device__, got {describe(value)}"
            )


def import_arrays(where: str, **values: Any) -> tuple[list[Any] | None, Callable[[Any], Any]]:
    """The inputs as kernel arrays, and how to turn a result into the inputs' kind.

    The arrays are None where the inputs are in host memory the kernels do not
    read here (no simulator, or a dtype numpy lacks): they go through PyTorch.
    """
    if all(is_kernel_array(value) for value in values.values()):
        return list(values.values()), lambda result: result
    _check_one_kind(where, **values)
    give_back = _exporter(where, next(iter(values.values())))
    arrays = [_importer(where, name, value) for name, value in values.items()]
    if any(array is None for array in arrays):
        return None, give_back
    return arrays, give_back
