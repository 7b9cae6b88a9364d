"""Array helpers for the CuPy front end: CuPy arrays on a GPU, or numpy arrays
standing in for device arrays under the simulator. CuPy itself comes from
``_runtime.cupy_runtime``."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .._plan.planner import TensorRef
from .._runtime import cupy_runtime as _cupy_runtime
from .._runtime.launch import simulator_enabled


def cupy_module() -> Any:
    """CuPy itself, for the array front end (raises KernelsUnavailableError)."""
    return _cupy_runtime._import_cupy()


def is_cupy_array(value: Any) -> bool:
    """True for a cupy.ndarray; never imports CuPy just to answer."""
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(value, cupy.ndarray)


def is_simulated_array(value: Any) -> bool:
    """numpy arrays stand in for device arrays when the simulator is on."""
    return simulator_enabled() and isinstance(value, np.ndarray)


def array_module(array: Any) -> Any:
    return np if isinstance(array, np.ndarray) else _cupy_runtime._import_cupy()


def array_device(array: Any) -> int:
    return 0 if isinstance(array, np.ndarray) else array.device.id


def array_dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def array_ref(array: Any) -> TensorRef:
    itemsize = array.dtype.itemsize
    strides = tuple(stride // itemsize for stride in array.strides)
    pointer = array.ctypes.data if isinstance(array, np.ndarray) else array.data.ptr
    return TensorRef(pointer, strides, array_dtype_name(array.dtype))


def array_empty(like: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """An uninitialised array from the same module, on the same device, as ``like``."""
    if isinstance(like, np.ndarray):
        return np.empty(shape, dtype=dtype)
    cupy = _cupy_runtime._import_cupy()
    with cupy.cuda.Device(like.device.id):
        return cupy.empty(shape, dtype=dtype)


def array_stream(array: Any) -> int:
    """CuPy's current stream on the array's device (0 under the simulator)."""
    if isinstance(array, np.ndarray):
        return 0
    cupy = _cupy_runtime._import_cupy()
    with cupy.cuda.Device(array.device.id):
        return cupy.cuda.get_current_stream().ptr
