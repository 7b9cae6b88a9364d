"""The ``carafe_cupy::carafe_forward/backward`` custom ops, their fake
implementations and their autograd (any order of derivative).

The ops take ``stride`` and ``dilation`` (default 1) after CARAFE's three
parameters: :func:`reassemble` and :func:`carafe` are one op, CARAFE being
stride 1 and dilation 1. CUDA tensors go to the NVRTC kernels on the caller's
current stream, with outputs allocated by torch; CPU tensors (or CUDA without
CuPy) go to the pure-PyTorch path in ``_cpu.path``.
"""

from __future__ import annotations

import torch

from .._core import validate as _validate
from .._core.errors import KernelsUnavailableError
from .._cpu import path as _cpu_path
from .._runtime import launch as _launch
from . import dynamo as _lazy_dynamo
from .common import (
    check_op_tensors,
    device_and_stream,
    empty_output,
    kernels_failed,
    tensor_ref,
    uses_kernels,
)

_FORWARD = "carafe_cupy::carafe_forward"
_BACKWARD = "carafe_cupy::carafe_backward"


@torch.library.custom_op(_FORWARD, mutates_args=())
def forward_op(
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
    stride: int = 1,
    dilation: int = 1,
) -> torch.Tensor:
    # checked here too, for callers of torch.ops.carafe_cupy.* (TorchScript among them)
    check_op_tensors(_FORWARD, features=features, masks=masks)
    params = (kernel_size, group_size, scale_factor, stride, dilation)
    geometry = _validate.check_geometry(features.shape, masks.shape, *params)
    if not uses_kernels(features.device):
        return _cpu_path.cpu_forward(features, masks, *params)
    _cpu_path.check_memory(geometry, features.dtype, features.device, backward=False)
    output = empty_output(features, scale_factor, stride)
    device, stream = device_and_stream(features.device)
    try:
        _launch.launch_forward(
            geometry,
            tensor_ref(features),
            tensor_ref(masks),
            tensor_ref(output),
            device,
            stream,
        )
    except KernelsUnavailableError as error:  # found at the first compile or load
        kernels_failed(features.device, error)
        return _cpu_path.cpu_forward(features, masks, *params)
    return output


@forward_op.register_fake
def _carafe_forward_fake(
    features, masks, kernel_size, group_size, scale_factor, stride=1, dilation=1
):
    check_op_tensors(_FORWARD, features=features, masks=masks)
    return empty_output(features, scale_factor, stride)


@torch.library.custom_op(_BACKWARD, mutates_args=())
def backward_op(
    grad_output: torch.Tensor,
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
    stride: int = 1,
    dilation: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_op_tensors(_BACKWARD, features=features, masks=masks, grad_output=grad_output)
    params = (kernel_size, group_size, scale_factor, stride, dilation)
    geometry = _validate.check_geometry(features.shape, masks.shape, *params)
    _validate.check_grad_output_shape(grad_output.shape, geometry)
    if not uses_kernels(features.device):
        return _cpu_path.cpu_backward(grad_output, features, masks, *params)
    _cpu_path.check_memory(geometry, features.dtype, features.device, backward=True)
    grad_features = torch.empty_like(features)
    grad_masks = torch.empty_like(masks)
    device, stream = device_and_stream(features.device)
    try:
        _launch.launch_backward(
            geometry,
            tensor_ref(grad_output),
            tensor_ref(features),
            tensor_ref(masks),
            tensor_ref(grad_features),
            tensor_ref(grad_masks),
            device,
            stream,
        )
    except KernelsUnavailableError as error:  # found at the first compile or load
        kernels_failed(features.device, error)
        return _cpu_path.cpu_backward(grad_output, features, masks, *params)
    return grad_features, grad_masks


@backward_op.register_fake
def _carafe_backward_fake(
    grad_output, features, masks, kernel_size, group_size, scale_factor, stride=1, dilation=1
):
    check_op_tensors(_BACKWARD, features=features, masks=masks, grad_output=grad_output)
    return torch.empty_like(features), torch.empty_like(masks)


def save_inputs(ctx, inputs, output) -> None:
    """Save the two tensors; the int parameters after them (3 for the fused op,
    5 for the plain ones) are kept as they came."""
    features, masks, *params = inputs
    ctx.save_for_backward(features, masks)
    ctx.params = tuple(params)


def _backward(ctx, grad_output):
    features, masks = ctx.saved_tensors
    grad_features, grad_masks = backward_op(grad_output, features, masks, *ctx.params)
    return grad_features, grad_masks, *(None,) * len(ctx.params)


forward_op.register_autograd(_backward, setup_context=save_inputs)


def _setup_backward_context(ctx, inputs, output) -> None:
    grad_output, features, masks, *params = inputs
    ctx.save_for_backward(grad_output, features, masks)
    ctx.params = tuple(params)


def _backward_of_backward(ctx, grad_grad_features, grad_grad_masks):
    """CARAFE is bilinear, out = B(features, masks), so with upstream gradient g
    the backward is (B_f^T(g, masks), B_m^T(g, features)), linear in each input:

        <gg_f, B_f^T(g, m)> = <g, B(gg_f, m)>,   <gg_m, B_m^T(g, f)> = <g, B(f, gg_m)>

    Their derivatives are CARAFE forward and backward calls again, which are
    differentiable in turn (any order of derivative works).
    """
    grad_output, features, masks = ctx.saved_tensors
    params = ctx.params
    needs_grad_output, needs_features, needs_masks = ctx.needs_input_grad[:3]
    grad_grad_output = grad_features = grad_masks = None
    if grad_grad_features is not None:
        if needs_grad_output:
            grad_grad_output = forward_op(grad_grad_features, masks, *params)
        if needs_masks:
            grad_masks = backward_op(grad_output, grad_grad_features, masks, *params)[1]
    if grad_grad_masks is not None:
        if needs_grad_output:
            term = forward_op(features, grad_grad_masks, *params)
            grad_grad_output = term if grad_grad_output is None else grad_grad_output + term
        if needs_features:
            grad_features = backward_op(grad_output, features, grad_grad_masks, *params)[0]
    return grad_grad_output, grad_features, grad_masks, *(None,) * len(params)


backward_op.register_autograd(_backward_of_backward, setup_context=_setup_backward_context)
for _op in (forward_op, backward_op):
    _lazy_dynamo.defer_dynamo_import(_op)


