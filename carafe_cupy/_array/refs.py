"""Array helpers for the CuPy front end: CuPy arrays on a GPU, or numpy arrays
standing in for device arrays under the simulator. CuPy itself comes from
``_runtime.cupy_runtime``."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .._core import limits as _limits
from .._core import validate as _validate
from .._core.geometry import Geometry
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


def _pointer(array: Any) -> int:
    """The address of element [0, 0, 0, 0] (the first in memory only without negative strides)."""
    return array.ctypes.data if isinstance(array, np.ndarray) else array.data.ptr


def layout_problem(array: Any, negative_strides: bool = True) -> str | None:
    """Why the kernels cannot index ``array`` in whole elements, or None.

    They read element (n, c, h, w) at pointer + n*sn + c*sc + h*sh + w*sw with strides
    counted in elements, so every byte stride must be a multiple of the element size
    and the first element aligned to it (a field of a packed structured array, or
    as_strided with an odd stride, is neither; on a GPU even a copy of one would read
    misaligned). Sizes 0 and 1 never move along their axis, so their strides do not
    matter. Negative strides are read correctly, from the element at the pointer
    down; ``negative_strides=False`` refuses them, for a consumer (torch) that has none.
    """
    if 0 in array.shape:
        return None
    itemsize = array.dtype.itemsize
    moving = [stride for stride, size in zip(array.strides, array.shape) if size > 1]
    uneven = [stride for stride in moving if stride % itemsize]
    if uneven:
        return (
            f"has byte strides {tuple(array.strides)}, not all multiples of its "
            f"{itemsize}-byte {array_dtype_name(array.dtype)} elements"
        )
    if _pointer(array) % itemsize:
        return (
            f"starts {_pointer(array) % itemsize} bytes past a multiple of its "
            f"{itemsize}-byte {array_dtype_name(array.dtype)} elements"
        )
    if not negative_strides and any(stride < 0 for stride in moving):
        return f"has negative byte strides {tuple(array.strides)}"
    return None


def check_layout(where: str, name: str, array: Any, negative_strides: bool = True) -> None:
    """TypeError naming ``name`` when the kernels cannot index it (see layout_problem)."""
    problem = layout_problem(array, negative_strides)
    if problem is not None:
        module = "cupy" if is_cupy_array(array) else "numpy"
        raise TypeError(
            f"{where}: {name} {problem}; pass {module}.ascontiguousarray({name}) instead"
        )


def array_ref(array: Any) -> TensorRef:
    check_layout("carafe", "an array", array)
    itemsize = array.dtype.itemsize
    strides = tuple(stride // itemsize for stride in array.strides)
    return TensorRef(_pointer(array), strides, array_dtype_name(array.dtype))


def device_memory_bytes(array: Any) -> int | None:
    """All the memory of the array's device: the host's for numpy, the GPU's for CuPy."""
    if isinstance(array, np.ndarray):
        return _limits.host_memory_bytes()
    cupy = _cupy_runtime._import_cupy()
    return cupy.cuda.Device(array.device.id).mem_info[1]


def check_fits(where: str, geometry: Geometry, *arrays: Any, backward: bool) -> None:
    """Refuse results, in the arrays' common dtype, that would need more than all the
    memory of their device (checked before any array is cast or allocated)."""
    array = arrays[0]
    dtype = np.result_type(*(each.dtype for each in arrays))
    weights = _validate.weights_name(where)
    parts = _limits.reassembly_parts(geometry, dtype.itemsize, backward, weights)
    device = "the host" if isinstance(array, np.ndarray) else f"cuda:{array.device.id}"
    cause = _limits.reassembly_cause(geometry, dtype.name)
    _limits.check_fits(where, parts, device_memory_bytes(array), device, cause)


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
