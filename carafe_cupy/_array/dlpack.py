"""Arrays from any library, through DLPack, for the array front end.

An input with ``__dlpack__`` and ``__dlpack_device__`` (a JAX array, a torch
tensor, anything implementing the protocol) is imported zero-copy as a cupy
array on its own device, or, under the simulator, a CPU one as a numpy array.
The import goes through ``cupy.from_dlpack`` with the array's device current,
so the producer is handed CuPy's current stream on that device and orders its
pending work before it (the DLPack stream protocol); the kernels then run on
that stream. Results go back through the input library's own ``from_dlpack``,
which passes its stream the same way. No torch and no CuPy imports here.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .._runtime import launch as _launch
from . import refs as _arrays

# DLPack device types (dlpack.h)
_CPU, _CUDA, _CUDA_HOST, _CUDA_MANAGED = 1, 2, 3, 13


def is_dlpack_array(value: Any) -> bool:
    return hasattr(value, "__dlpack__") and hasattr(value, "__dlpack_device__")


def is_kernel_array(value: Any) -> bool:
    """An array the launch code reads directly: cupy, or numpy under the simulator."""
    return _arrays.is_cupy_array(value) or _arrays.is_simulated_array(value)


@contextlib.contextmanager
def on_device(array: Any) -> Iterator[None]:
    """Make the array's device CuPy's current one (nothing to do for numpy)."""
    if isinstance(array, np.ndarray):
        yield
        return
    with _arrays.cupy_module().cuda.Device(_arrays.array_device(array)):
        yield


def _describe(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__name__}"


def _importer(name: str, value: Any) -> Any:
    device_type, device_id = (int(part) for part in value.__dlpack_device__())
    if device_type in (_CUDA, _CUDA_MANAGED):
        cupy = _arrays.cupy_module()
        with cupy.cuda.Device(device_id):
            return cupy.from_dlpack(value)
    if device_type in (_CPU, _CUDA_HOST) and _launch.simulator_enabled():
        return np.from_dlpack(value)
    where = "CPU memory" if device_type in (_CPU, _CUDA_HOST) else f"DLPack device {device_type}"
    raise TypeError(
        f"carafe: {name} ({_describe(value)}) is in {where}; the kernels need CUDA memory. "
        "Pass arrays on a CUDA device, torch CPU tensors to carafe_cupy.carafe (the PyTorch "
        "path), or set CARAFE_CUPY_SIMULATOR=1 to run the kernels on the CPU."
    )


def _exporter(value: Any) -> Callable[[Any], Any]:
    """``from_dlpack`` of the library the value comes from."""
    if hasattr(value, "__array_namespace__"):
        namespace = value.__array_namespace__()
    else:
        namespace = sys.modules[type(value).__module__.split(".")[0]]
    from_dlpack = getattr(namespace, "from_dlpack", None)
    if from_dlpack is None:
        raise TypeError(
            f"carafe: {_describe(value)} speaks DLPack, but its library has no from_dlpack "
            "to take the result back; pass cupy arrays instead"
        )
    return from_dlpack


def import_arrays(**values: Any) -> tuple[list[Any], Callable[[Any], Any]]:
    """The inputs as kernel arrays, and how to turn a result into the inputs' kind."""
    if all(is_kernel_array(value) for value in values.values()):
        return list(values.values()), lambda result: result
    kinds = {type(value) for value in values.values()}
    if len(kinds) > 1:
        listing = ", ".join(f"{name} is {_describe(value)}" for name, value in values.items())
        raise TypeError(f"carafe: inputs must all be arrays of one kind; {listing}")
    for name, value in values.items():
        if not is_dlpack_array(value):
            raise TypeError(
                f"carafe: {name} must be a cupy.ndarray or an array with __dlpack__ and "
                f"__dlpack_device__, got {_describe(value)}"
            )
    arrays = [_importer(name, value) for name, value in values.items()]
    return arrays, _exporter(next(iter(values.values())))
