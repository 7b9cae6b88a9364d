"""The eager fast path: a plain ``torch.autograd.Function`` straight to the launcher.

An eager call with plain tensors of one dtype, on a device that runs the kernels,
needs none of the custom op's machinery (its dispatcher round trips, schema
checks, the autograd wrapper around an opaque op). It is checked once per
signature (``checked_calls``), and its launches are prepared once per signature
and layout (``_runtime.launch.prepare``), so a call allocates its outputs, reads
pointers and strides, and launches. The custom ops (``ops.py``) stay the path for
everything else: ``torch.compile`` and export, jit tracing, functorch transforms
(vmap, grad), fake tensors, dispatch and function modes, autocast, tensor
subclasses, ONNX export, mixed dtypes. Both paths launch the same plans with the
same arguments, so they give identical results.
"""

from __future__ import annotations

import torch

from .._core.errors import KernelsUnavailableError
from .._cpu import path as _cpu_path
from .._plan.types import requested_variant
from .._runtime import launch as _launcher
from . import export as _export
from .checked_calls import (
    CheckedForward,
    check_forward_memory,
    check_grad_output,
    checked_forward,
)
from .common import device_and_stream, kernels_failed, uses_kernels
from .ops import backward_op

_PLAIN = (torch.Tensor, torch.nn.Parameter)
_ALIGNMENT = 16  # all a plan reads of a pointer is its offset from 16 bytes


_is_compiling = torch.compiler.is_compiling
_tracing_state = torch._C._get_tracing_state
_functorch_transform = torch._C._functorch.peek_interpreter_stack
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._len_torch_function_stack
_any_autocast = torch._C._is_any_autocast_enabled


def _no_special_mode() -> bool:
    """Nothing that must see the custom op is active: compiling or exporting, jit
    tracing, a functorch transform, a dispatch or function mode, autocast."""
    return not (
        _is_compiling()  # first: under torch.compile the rest is never traced
        or _tracing_state()
        or _functorch_transform() is not None
        or _dispatch_modes()
        or _function_modes()
        or _any_autocast()
        or _export.exporting_to_onnx()
    )


def applies(features: object, weights: object, params: tuple) -> bool:
    """Whether a public call with these arguments takes the fast path."""
    return (
        type(features) in _PLAIN
        and type(weights) in _PLAIN
        and features.dtype == weights.dtype  # type: ignore[attr-defined]
        and tuple(map(type, params)) == _INTS  # a bool is refused by the checks, not here
        and _no_special_mode()
        and uses_kernels(features.device)  # type: ignore[attr-defined]
    )


_INTS = (int,) * 5  # kernel size, group, scale, stride, dilation
_MAX_PREPARED = 64  # per signature: alignments, variants, simulator or GPU


def _launch(
    operation: tuple,
    checked: CheckedForward,
    tensors: tuple,
    pointers: tuple,
    misaligned: int,
    device: int,
    stream: int,
) -> None:
    """Launch ``operation`` ("forward", or "backward" with the gradients wanted) for
    ``tensors`` (None where absent) at ``pointers`` (0 there; ``misaligned`` is all of
    them or-ed together), its prepared call kept on the checked signature: what it
    depends on beyond the signature is the pointers' alignment, the requested variant
    and simulator or GPU (which the signature's device decides on this path)."""
    # every pointer 16-byte aligned (torch's allocations are): one key for them all
    alignment = tuple([p % _ALIGNMENT for p in pointers]) if misaligned % _ALIGNMENT else None
    key = (operation, alignment, requested_variant(), checked.simulated)
    prepared = checked.launches.get(key)
    if prepared is None:
        layout = tuple(
            None if tensor is None else (tensor.stride(), pointer % _ALIGNMENT)
            for tensor, pointer in zip(tensors, pointers)
        )
        prepared = _launcher.prepare(operation[0], checked.geometry, checked.dtype, layout, device)
        if len(checked.launches) >= _MAX_PREPARED:
            checked.launches.clear()
        checked.launches[key] = prepared
    prepared.run(pointers, device, stream)


_FORWARD = ("forward",)
_BACKWARD = {  # by the gradients wanted: built once, not per call
    (features, masks): ("backward", features, masks)
    for features in (False, True)
    for masks in (False, True)
}


def _launch_forward(features, masks, checked: CheckedForward) -> torch.Tensor:
    where = checked.device
    if checked.memory_format is None:
        output = torch.empty(checked.output_shape, dtype=features.dtype, device=where)
    else:
        output = torch.empty(
            checked.output_shape,
            dtype=features.dtype,
            device=where,
            memory_format=checked.memory_format,
        )
    device, stream = device_and_stream(where)
    pointers = (features.data_ptr(), masks.data_ptr(), output.data_ptr())
    misaligned = pointers[0] | pointers[1] | pointers[2]
    try:
        _launch(_FORWARD, checked, (features, masks, output), pointers, misaligned, device, stream)
    except KernelsUnavailableError as error:  # found at the first compile or load
        kernels_failed(where, error)
        return _cpu_path.cpu_forward(features, masks, *checked.params)
    return output


def _launch_backward(grad_output, features, masks, checked: CheckedForward, wanted):
    check_grad_output(checked, grad_output, features)
    want_features, want_masks = wanted[0], wanted[1]
    grad_features = torch.empty_like(features) if want_features else None
    grad_masks = torch.empty_like(masks) if want_masks else None
    tensors = (grad_output, features, masks, grad_features, grad_masks)
    pointers = (
        grad_output.data_ptr(),
        features.data_ptr(),
        masks.data_ptr(),
        0 if grad_features is None else grad_features.data_ptr(),
        0 if grad_masks is None else grad_masks.data_ptr(),
    )
    misaligned = pointers[0] | pointers[1] | pointers[2] | pointers[3] | pointers[4]
    where = checked.device
    device, stream = device_and_stream(where)
    try:
        operation = _BACKWARD[want_features, want_masks]
        _launch(operation, checked, tensors, pointers, misaligned, device, stream)
    except KernelsUnavailableError as error:
        kernels_failed(where, error)
        return _cpu_path.cpu_backward(grad_output, features, masks, *checked.params)
    return grad_features, grad_masks


class _Reassembly(torch.autograd.Function):
    """forward_op and its autograd, for the fast path."""

    @staticmethod
    def forward(ctx, features, masks, checked):
        ctx.checked = checked
        ctx.save_for_backward(features, masks)
        return _launch_forward(features, masks, checked)

    @staticmethod
    def backward(ctx, grad_output):
        features, masks = ctx.saved_tensors
        checked = ctx.checked
        # grad mode is on here only for create_graph: the differentiable op then,
        # as for anything unusual (its checks give the errors)
        if (
            torch.is_grad_enabled()
            or type(grad_output) not in _PLAIN
            or grad_output.dtype != features.dtype
            or grad_output.device != checked.device
            or not _no_special_mode()
        ):
            grads = backward_op(grad_output, features, masks, *checked.op_params)
        else:
            grads = _launch_backward(grad_output, features, masks, checked, ctx.needs_input_grad)
        return grads[0], grads[1], None


def reassemble(features, weights, params: tuple[int, ...], where: str) -> torch.Tensor:
    """The fast path of ``reassemble`` / ``carafe`` (``applies`` was True)."""
    checked = checked_forward(where, features, weights, params)
    check_forward_memory(checked, features)
    if torch.is_grad_enabled() and (features.requires_grad or weights.requires_grad):
        return _Reassembly.apply(features, weights, checked)
    return _launch_forward(features, weights, checked)
