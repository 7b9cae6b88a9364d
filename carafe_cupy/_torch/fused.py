"""CARAFE from raw encoder logits: pixel_shuffle and softmax inside the kernels.

``carafe_cupy::carafe_fused_forward/backward`` take the content encoder's output
(N, G*k*k*s*s, H, W), so CARAFEPack's normalised masks are never stored. Where
the fused kernels do not run (CPU, no CuPy, fp64 with k >= 5), and whenever a
second derivative is being built, the same result is composed from
:func:`normalize_logits` and the plain ops.
"""

from __future__ import annotations

import torch

from .._core import validate as _validate
from .._core.errors import KernelsUnavailableError
from .._cpu import path as _cpu_path
from .._plan import planner as _planner
from .._runtime import launch as _launch
from . import dynamo as _lazy_dynamo
from . import export as _export
from .common import (
    check_op_tensors,
    check_tensors,
    device_and_stream,
    dtype_name,
    empty_output,
    kernels_failed,
    normalize_logits,
    tensor_ref,
    uses_kernels,
)
from .ops import backward_op, forward_op, save_inputs


def check_logits_geometry(
    features_shape: tuple[int, ...],
    logits_shape: tuple[int, ...],
    kernel_size: int,
    group_size: int,
    scale_factor: int,
    where: str = "carafe_from_logits",
) -> _launch.Geometry:
    """The geometry of CARAFE on ``features`` with masks from ``logits``; a wrong
    logits shape is reported as the logits', not as that of the masks made from them."""
    kernel_size, group_size, scale_factor = _validate.check_params(
        kernel_size, group_size, scale_factor, where
    )
    layout = "(N, G*k*k*s*s, H, W)"
    if len(logits_shape) != 4:
        raise ValueError(
            f"{where}: logits must be 4-D {layout}, got {len(logits_shape)}-D shape "
            f"{tuple(logits_shape)}"
        )
    channels = group_size * kernel_size * kernel_size * scale_factor * scale_factor
    if len(features_shape) == 4:  # features of another rank are refused by check_geometry
        batch, _, height, width = (int(size) for size in features_shape)
        expected = (batch, channels, height, width)
        if tuple(int(size) for size in logits_shape) != expected:
            raise ValueError(
                f"{where}: logits must have shape {layout} = {expected} for features "
                f"{tuple(features_shape)}, kernel_size={kernel_size}, group_size={group_size}, "
                f"scale_factor={scale_factor}; got {tuple(logits_shape)}"
            )
    batch, _, height, width = logits_shape
    masks_shape = (batch, group_size * kernel_size**2, height * scale_factor, width * scale_factor)
    return _validate.check_geometry(
        features_shape, masks_shape, kernel_size, group_size, scale_factor, where=where
    )


_FUSED_FORWARD = "carafe_cupy::carafe_fused_forward"
_FUSED_BACKWARD = "carafe_cupy::carafe_fused_backward"


def _uses_fused_kernels(features: torch.Tensor, geometry: _launch.Geometry) -> bool:
    return uses_kernels(features.device) and _planner.fused_supported(
        geometry, dtype_name(features.dtype)
    )


def _normalised_masks(logits: torch.Tensor, fused: bool) -> list[tuple[str, int]]:
    """Memory the composed path takes before the plain op checks its own: the
    pixel_shuffled and the softmaxed logits (nothing where the fused kernels run)."""
    if fused:
        return []
    return [("the masks normalised from the logits", 2 * logits.numel() * logits.itemsize)]


@torch.library.custom_op(_FUSED_FORWARD, mutates_args=())
def carafe_fused_forward(
    features: torch.Tensor,
    logits: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> torch.Tensor:
    check_op_tensors(_FUSED_FORWARD, features=features, logits=logits)
    geometry = check_logits_geometry(
        features.shape, logits.shape, kernel_size, group_size, scale_factor
    )
    fused = _uses_fused_kernels(features, geometry)
    extra = _normalised_masks(logits, fused)
    where = "carafe_from_logits"
    _cpu_path.check_memory(
        geometry, features.dtype, features.device, False, where=where, extra=extra
    )
    if fused:
        output = empty_output(features, scale_factor)
        device, stream = device_and_stream(features.device)
        try:
            refs = (tensor_ref(features), tensor_ref(logits), tensor_ref(output))
            _launch.launch_fused_forward(geometry, *refs, device, stream)
            return output
        except KernelsUnavailableError as error:  # found at the first compile or load
            kernels_failed(features.device, error)
    masks = normalize_logits(logits, kernel_size, scale_factor)
    return forward_op(features, masks, kernel_size, group_size, scale_factor)


@carafe_fused_forward.register_fake
def _carafe_fused_forward_fake(features, logits, kernel_size, group_size, scale_factor):
    check_op_tensors(_FUSED_FORWARD, features=features, logits=logits)
    return empty_output(features, scale_factor)


def fused_backward_composed(
    grad_output: torch.Tensor,
    features: torch.Tensor,
    logits: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused backward from differentiable pieces: normalise, plain backward,
    softmax backward per (group, pixel), then undo the pixel_shuffle."""
    masks = normalize_logits(logits, kernel_size, scale_factor)
    grad_features, grad_masks = backward_op(
        grad_output, features, masks, kernel_size, group_size, scale_factor
    )
    accumulate = _cpu_path.accumulation_dtype(logits.dtype)
    batch, mask_channels, height, width = masks.shape
    taps = kernel_size * kernel_size
    shape = (batch, mask_channels // taps, taps, height, width)
    probability = masks.to(accumulate).view(shape)
    grad = grad_masks.to(accumulate).view(shape)
    grad = probability * (grad - (probability * grad).sum(dim=2, keepdim=True))
    grad_logits = torch.nn.functional.pixel_unshuffle(
        grad.view(batch, mask_channels, height, width), scale_factor
    ).to(logits.dtype)
    return grad_features, grad_logits


@torch.library.custom_op(_FUSED_BACKWARD, mutates_args=())
def carafe_fused_backward(
    grad_output: torch.Tensor,
    features: torch.Tensor,
    logits: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_op_tensors(_FUSED_BACKWARD, features=features, logits=logits, grad_output=grad_output)
    geometry = check_logits_geometry(
        features.shape, logits.shape, kernel_size, group_size, scale_factor
    )
    _validate.check_grad_output_shape(grad_output.shape, geometry)
    fused = _uses_fused_kernels(features, geometry)
    extra = _normalised_masks(logits, fused)
    device = features.device
    _cpu_path.check_memory(
        geometry,
        features.dtype,
        device,
        True,
        where="carafe_from_logits",
        weights="logits",
        extra=extra,
    )
    if fused:
        grad_features = torch.empty_like(features)
        grad_logits = torch.empty_like(logits)
        device, stream = device_and_stream(features.device)
        try:
            _launch.launch_fused_backward(
                geometry,
                tensor_ref(grad_output),
                tensor_ref(features),
                tensor_ref(logits),
                tensor_ref(grad_features),
                tensor_ref(grad_logits),
                device,
                stream,
            )
            return grad_features, grad_logits
        except KernelsUnavailableError as error:  # found at the first compile or load
            kernels_failed(features.device, error)
    return fused_backward_composed(
        grad_output, features, logits, kernel_size, group_size, scale_factor
    )


@carafe_fused_backward.register_fake
def _carafe_fused_backward_fake(grad_output, features, logits, kernel_size, group_size, scale):
    check_op_tensors(_FUSED_BACKWARD, features=features, logits=logits, grad_output=grad_output)
    return torch.empty_like(features), torch.empty_like(logits)


def _fused_backward(ctx, grad_output):
    features, logits = ctx.saved_tensors
    if torch.is_grad_enabled():
        # backward(create_graph=True): record differentiable pieces, so a second
        # derivative (a gradient penalty) flows through the plain ops' autograd
        grad_features, grad_logits = fused_backward_composed(
            grad_output, features, logits, *ctx.params
        )
    else:
        grad_features, grad_logits = carafe_fused_backward(
            grad_output.contiguous(), features, logits, *ctx.params
        )
    return grad_features, grad_logits, None, None, None


carafe_fused_forward.register_autograd(_fused_backward, setup_context=save_inputs)
for _op in (carafe_fused_forward, carafe_fused_backward):
    _lazy_dynamo.defer_dynamo_import(_op)


def carafe_from_logits(
    features: torch.Tensor,
    logits: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> torch.Tensor:
    """CARAFE with masks = softmax over taps of pixel_shuffle(logits), fused.

    ``logits`` is the content encoder's raw output, (N, G*k*k*s*s, H, W).
    """
    check_tensors(features=features, logits=logits)
    kernel_size, group_size, scale_factor = _validate.check_params(
        kernel_size, group_size, scale_factor
    )
    dtype = torch.promote_types(features.dtype, logits.dtype)
    if _export.exporting_to_onnx():
        masks = normalize_logits(logits.to(dtype), kernel_size, scale_factor)
        return _export.decomposed_forward(
            features.to(dtype), masks, kernel_size, group_size, scale_factor
        )
    geometry = check_logits_geometry(
        features.shape, logits.shape, kernel_size, group_size, scale_factor
    )
    casts = (("features", features), ("logits", logits))
    where = "carafe_from_logits"
    _cpu_path.check_memory(geometry, dtype, features.device, False, where=where, casts=casts)
    return carafe_fused_forward(
        features.to(dtype), logits.to(dtype), kernel_size, group_size, scale_factor
    )
