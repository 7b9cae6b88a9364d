"""CuPy front end: cupy arrays in, cupy arrays out, on CuPy's current stream.

No torch here; CuPy itself is reached only through ``_launch``.
"""

from __future__ import annotations

from typing import Any

from . import _launch, _validate


def _check_arrays(**arrays: Any) -> int:
    """Check types, dtypes and devices; return the device id."""
    for name, array in arrays.items():
        if not _launch.is_cupy_array(array):
            raise TypeError(
                f"carafe: {name} must be a cupy.ndarray like the other inputs, "
                f"got {type(array).__module__}.{type(array).__name__}"
            )
        _validate.check_dtype(name, _launch.cupy_dtype_name(array.dtype))
    devices = {name: array.device.id for name, array in arrays.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on cuda:{device}" for name, device in devices.items())
        raise ValueError(f"carafe: all arrays must be on one device, got {listing}")
    return next(iter(devices.values()))


def _promote(*arrays: Any) -> tuple[Any, ...]:
    dtype = _launch.cupy_module().result_type(*arrays)
    return tuple(array.astype(dtype, copy=False) for array in arrays)


def carafe(features: Any, masks: Any, kernel_size: int, group_size: int, scale_factor: int) -> Any:
    device = _check_arrays(features=features, masks=masks)
    geometry = _validate.check_geometry(
        features.shape, masks.shape, kernel_size, group_size, scale_factor
    )
    features, masks = _promote(features, masks)
    shape = (geometry.batch, geometry.channels, geometry.out_height, geometry.out_width)
    output = _launch.cupy_empty(shape, features.dtype, device)
    _launch.launch_forward(
        geometry,
        _launch.cupy_array_ref(features),
        _launch.cupy_array_ref(masks),
        _launch.cupy_array_ref(output),
        device,
        _launch.cupy_current_stream(device),
    )
    return output


def carafe_backward(
    grad_output: Any,
    features: Any,
    masks: Any,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> tuple[Any, Any]:
    device = _check_arrays(grad_output=grad_output, features=features, masks=masks)
    geometry = _validate.check_geometry(
        features.shape, masks.shape, kernel_size, group_size, scale_factor
    )
    _validate.check_grad_output_shape(grad_output.shape, geometry)
    feature_dtype, mask_dtype = features.dtype, masks.dtype
    grad_output, features, masks = _promote(grad_output, features, masks)
    grad_features = _launch.cupy_empty(features.shape, features.dtype, device)
    grad_masks = _launch.cupy_empty(masks.shape, masks.dtype, device)
    _launch.launch_backward(
        geometry,
        _launch.cupy_array_ref(grad_output),
        _launch.cupy_array_ref(features),
        _launch.cupy_array_ref(masks),
        _launch.cupy_array_ref(grad_features),
        _launch.cupy_array_ref(grad_masks),
        device,
        _launch.cupy_current_stream(device),
    )
    return grad_features.astype(feature_dtype, copy=False), grad_masks.astype(
        mask_dtype, copy=False
    )
