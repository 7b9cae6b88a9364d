"""The torch side of the public functions: checks, dtype promotion, the switch
to the standard-op formula while ONNX export traces, then the custom ops."""

from __future__ import annotations

import torch

from .._core import validate as _validate
from .._cpu import path as _cpu_path
from . import eager as _eager
from . import export as _export
from .common import as_dtype, check_tensors, normalize_logits  # noqa: F401 (re-exported)
from .fused import carafe_from_logits  # noqa: F401 (re-exported)
from .ops import backward_op, forward_op


def _op_params(geometry) -> tuple[int, ...]:
    """The ops' int arguments; stride and dilation only where they are not 1, so
    CARAFE's traced graphs and scripted calls stay as they were."""
    params = (geometry.kernel_size, geometry.group_size, geometry.scale_factor)
    return params if geometry.is_carafe else (*params, geometry.stride, geometry.dilation)


def reassemble(
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int,
    group_size: int = 1,
    scale_factor: int = 1,
    stride: int = 1,
    dilation: int = 1,
    where: str = "reassemble",
) -> torch.Tensor:
    """The torch side of ``carafe_cupy.reassemble`` (and of ``carafe``, ``where="carafe"``)."""
    params = (kernel_size, group_size, scale_factor, stride, dilation)
    if _eager.applies(features, kernels, params):  # eager, plain tensors: no custom op
        return _eager.reassemble(features, kernels, params, where)
    check_tensors(where, features=features, **{_validate.weights_name(where): kernels})
    dtype = torch.promote_types(features.dtype, kernels.dtype)
    if _export.exporting_to_onnx():
        # ONNX has no counterpart of the custom op: export the standard-op formula,
        # with sizes left symbolic (the full shape check would fix them to ints)
        return _export.decomposed_forward(
            as_dtype(features, dtype),
            as_dtype(kernels, dtype),
            *_validate.check_reassembly_params(*params, where),
        )
    geometry = _validate.check_geometry(features.shape, kernels.shape, *params, where=where)
    inputs = (("features", features), (_validate.weights_name(where), kernels))
    _cpu_path.check_memory(geometry, dtype, features.device, False, where=where, casts=inputs)
    return forward_op(
        as_dtype(features, dtype), as_dtype(kernels, dtype), *_op_params(geometry)
    )


def carafe(
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> torch.Tensor:
    params = (kernel_size, group_size, scale_factor, 1, 1)
    if _eager.applies(features, masks, params):  # as in reassemble, one call less
        return _eager.reassemble(features, masks, params, "carafe")
    return reassemble(features, masks, kernel_size, group_size, scale_factor, where="carafe")


def reassemble_backward(
    grad_output: torch.Tensor,
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int,
    group_size: int = 1,
    scale_factor: int = 1,
    stride: int = 1,
    dilation: int = 1,
    where: str = "reassemble_backward",
) -> tuple[torch.Tensor, torch.Tensor]:
    name = _validate.weights_name(where)
    check_tensors(where, grad_output=grad_output, features=features, **{name: kernels})
    params = (kernel_size, group_size, scale_factor, stride, dilation)
    geometry = _validate.check_geometry(features.shape, kernels.shape, *params, where=where)
    _validate.check_grad_output_shape(grad_output.shape, geometry, where)
    dtype = torch.promote_types(features.dtype, kernels.dtype)
    inputs = (("grad_output", grad_output), ("features", features), (name, kernels))
    _cpu_path.check_memory(
        geometry, dtype, features.device, True, where=where, weights=name, casts=inputs
    )
    # Gradients as plain values: this op has no derivative of its own, so the
    # results must not join the caller's graph (a later .backward() would fail).
    with torch.no_grad():
        grad_features, grad_kernels = backward_op(
            grad_output.to(dtype), features.to(dtype), kernels.to(dtype), *_op_params(geometry)
        )
    return grad_features.to(features.dtype), grad_kernels.to(kernels.dtype)


