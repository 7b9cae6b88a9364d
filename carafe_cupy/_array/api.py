"""Array front end: cupy arrays in, cupy arrays out, on CuPy's current stream.

Any other array with ``__dlpack__`` and ``__dlpack_device__`` (JAX, torch, ...)
is taken zero-copy through DLPack and the result handed back as the same kind
(see ``_array.dlpack``). Under the simulator (``CARAFE_CUPY_SIMULATOR=1``) numpy
arrays and CPU DLPack arrays take the same path on the CPU; without it, arrays in
host memory run on the PyTorch CPU path (``_array.via_torch``), as do bfloat16
ones, which numpy lacks. CuPy itself is reached only through ``_runtime.launch``.
"""

from __future__ import annotations

from typing import Any

from .._core import validate as _validate
from .._runtime import launch as _launch
from . import dlpack as _dlpack
from . import refs as _arrays
from . import via_torch as _via_torch


def _check_arrays(where: str = "carafe", **arrays: Any) -> None:
    for name, array in arrays.items():
        _validate.check_dtype(name, _arrays.array_dtype_name(array.dtype), where)
        _arrays.check_layout(where, name, array)
    devices = {name: _arrays.array_device(array) for name, array in arrays.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on cuda:{device}" for name, device in devices.items())
        raise ValueError(f"{where}: all arrays must be on one device, got {listing}")


def _promote(*arrays: Any) -> tuple[Any, ...]:
    """Cast to the common dtype on the arrays' device, whichever device is current."""
    dtype = _arrays.array_module(arrays[0]).result_type(*arrays)
    with _dlpack.on_device(arrays[0]):
        return tuple(array.astype(dtype, copy=False) for array in arrays)


def reassemble(
    features: Any,
    kernels: Any,
    kernel_size: int,
    group_size: int = 1,
    scale_factor: int = 1,
    stride: int = 1,
    dilation: int = 1,
    where: str = "reassemble",
) -> Any:
    """Reassembly on arrays (no autograd); see :func:`carafe_cupy.reassemble`."""
    name = _validate.weights_name(where)
    params = (kernel_size, group_size, scale_factor, stride, dilation)
    inputs = {"features": features, name: kernels}
    arrays, give_back = _dlpack.import_arrays(where, **inputs)
    if arrays is None:
        return give_back(_via_torch.reassemble(where, inputs, params))
    features, kernels = arrays
    _check_arrays(where, features=features, **{name: kernels})
    geometry = _validate.check_geometry(features.shape, kernels.shape, *params, where=where)
    _arrays.check_fits(where, geometry, features, kernels, backward=False)
    features, kernels = _promote(features, kernels)
    shape = (geometry.batch, geometry.channels, geometry.out_height, geometry.out_width)
    output = _arrays.array_empty(features, shape, features.dtype)
    _launch.launch_forward(
        geometry,
        _arrays.array_ref(features),
        _arrays.array_ref(kernels),
        _arrays.array_ref(output),
        _arrays.array_device(features),
        _arrays.array_stream(features),
    )
    return give_back(output)


def carafe(features: Any, masks: Any, kernel_size: int, group_size: int, scale_factor: int) -> Any:
    """CARAFE on arrays (no autograd); see :func:`carafe_cupy.carafe`."""
    return reassemble(features, masks, kernel_size, group_size, scale_factor, where="carafe")


def reassemble_backward(
    grad_output: Any,
    features: Any,
    kernels: Any,
    kernel_size: int,
    group_size: int = 1,
    scale_factor: int = 1,
    stride: int = 1,
    dilation: int = 1,
    where: str = "reassemble_backward",
) -> tuple[Any, Any]:
    """``(grad_features, grad_kernels)`` of :func:`reassemble`, in the inputs' dtypes."""
    name = _validate.weights_name(where)
    params = (kernel_size, group_size, scale_factor, stride, dilation)
    inputs = {"grad_output": grad_output, "features": features, name: kernels}
    arrays, give_back = _dlpack.import_arrays(where, **inputs)
    if arrays is None:
        grads = _via_torch.reassemble_backward(where, inputs, params)
        return give_back(grads[0]), give_back(grads[1])
    grad_output, features, kernels = arrays
    _check_arrays(where, grad_output=grad_output, features=features, **{name: kernels})
    geometry = _validate.check_geometry(features.shape, kernels.shape, *params, where=where)
    _validate.check_grad_output_shape(grad_output.shape, geometry, where)
    feature_dtype, kernel_dtype = features.dtype, kernels.dtype
    _arrays.check_fits(where, geometry, grad_output, features, kernels, backward=True)
    grad_output, features, kernels = _promote(grad_output, features, kernels)
    grad_features = _arrays.array_empty(features, features.shape, features.dtype)
    grad_kernels = _arrays.array_empty(features, kernels.shape, kernels.dtype)
    _launch.launch_backward(
        geometry,
        _arrays.array_ref(grad_output),
        _arrays.array_ref(features),
        _arrays.array_ref(kernels),
        _arrays.array_ref(grad_features),
        _arrays.array_ref(grad_kernels),
        _arrays.array_device(features),
        _arrays.array_stream(features),
    )
    with _dlpack.on_device(features):
        grad_features = grad_features.astype(feature_dtype, copy=False)
        grad_kernels = grad_kernels.astype(kernel_dtype, copy=False)
    return give_back(grad_features), give_back(grad_kernels)


def carafe_backward(
    grad_output: Any,
    features: Any,
    masks: Any,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> tuple[Any, Any]:
    """``(grad_features, grad_masks)`` of :func:`carafe`, in the inputs' dtypes."""
    return reassemble_backward(
        grad_output, features, masks, kernel_size, group_size, scale_factor, where="carafe_backward"
    )
