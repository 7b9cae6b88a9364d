"""PyTorch front end: the ``carafe_cupy::carafe_forward/backward`` custom ops.

The ops take ``stride`` and ``dilation`` (default 1) after CARAFE's three
parameters: :func:`reassemble` and :func:`carafe` are one op, CARAFE being
stride 1 and dilation 1.

CUDA tensors go to the NVRTC kernels on the caller's current stream, with
outputs allocated by torch; CPU tensors (or CUDA without CuPy) go to the
pure-PyTorch path in ``_reference``.
"""

from __future__ import annotations

import functools
import warnings

import torch

from .._core import validate as _validate
from .._cpu import path as _reference
from .._runtime import cupy_runtime as _cupy_runtime
from .._runtime import launch as _launch
from . import dynamo as _lazy_dynamo
from . import export as _decomposed

_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def _ref(tensor: torch.Tensor) -> _launch.TensorRef:
    return _launch.TensorRef(tensor.data_ptr(), tuple(tensor.stride()), dtype_name(tensor.dtype))


@functools.lru_cache(maxsize=1)
def _gpu_kernels_available() -> bool:
    available = _cupy_runtime.gpu_kernels_available()
    if not available:
        reason = (
            _cupy_runtime.gpu_kernels_unavailable_reason() or "CuPy with NVRTC is not usable here"
        )
        warnings.warn(
            f"carafe_cupy: {reason}, so CUDA tensors take the slower pure-PyTorch path. Install "
            "the kernels with `pip install carafe_cupy[cuda12]` or `pip install "
            "carafe_cupy[cuda13]` (matching your CUDA driver; cuda12 for sm_70 and older GPUs, "
            "which NVRTC 13 no longer targets).",
            RuntimeWarning,
            stacklevel=4,
        )
    return available


@functools.cache
def _kernels_target(device_index: int) -> bool:
    """Whether NVRTC compiles for this GPU (NVRTC 13 does not for sm_70), warning once if not."""
    reason = _cupy_runtime.gpu_kernels_unavailable_reason(device_index)
    if reason is not None:
        warnings.warn(
            f"carafe_cupy: {reason}. Until then, CUDA tensors on cuda:{device_index} take "
            "the slower pure-PyTorch path.",
            RuntimeWarning,
            stacklevel=4,
        )
    return reason is None


def uses_kernels(device: torch.device) -> bool:
    """Whether tensors on this device run the ``.cu`` kernels (GPU or simulator)."""
    if _launch.simulator_enabled():
        return device.type == "cpu"
    return (
        device.type == "cuda"
        and _gpu_kernels_available()
        and _kernels_target(device.index if device.index is not None else 0)
    )


def backend_name(device: torch.device) -> str:
    if _launch.simulator_enabled() and device.type == "cpu":
        return "cuda kernels on the CPU simulator"
    if device.type == "cuda" and _cupy_runtime.gpu_kernels_available(device.index):
        return "cuda kernels (NVRTC via CuPy)"
    return f"pure PyTorch on {device.type}"


def _device_and_stream(device: torch.device) -> tuple[int, int]:
    if device.type != "cuda":
        return 0, 0
    return device.index, torch.cuda.current_stream(device).cuda_stream


def _empty_output(features: torch.Tensor, scale_factor: int, stride: int = 1) -> torch.Tensor:
    batch, channels, height, width = features.shape
    rows, cols = -(-height // stride), -(-width // stride)  # window centers
    return torch.empty(
        (batch, channels, rows * scale_factor, cols * scale_factor),
        dtype=features.dtype,
        device=features.device,
        memory_format=_reference.output_memory_format(features),
    )


@torch.library.custom_op("carafe_cupy::carafe_forward", mutates_args=())
def carafe_forward(
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
    stride: int = 1,
    dilation: int = 1,
) -> torch.Tensor:
    # checked here too, for callers of torch.ops.carafe_cupy.* (TorchScript among them)
    params = (kernel_size, group_size, scale_factor, stride, dilation)
    geometry = _validate.check_geometry(features.shape, masks.shape, *params)
    if not uses_kernels(features.device):
        return _reference.carafe_forward(features, masks, *params)
    output = _empty_output(features, scale_factor, stride)
    device, stream = _device_and_stream(features.device)
    _launch.launch_forward(
        geometry,
        _ref(features),
        _ref(masks),
        _ref(output),
        device,
        stream,
    )
    return output


@carafe_forward.register_fake
def _carafe_forward_fake(
    features, masks, kernel_size, group_size, scale_factor, stride=1, dilation=1
):
    return _empty_output(features, scale_factor, stride)


@torch.library.custom_op("carafe_cupy::carafe_backward", mutates_args=())
def carafe_backward(
    grad_output: torch.Tensor,
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
    stride: int = 1,
    dilation: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    params = (kernel_size, group_size, scale_factor, stride, dilation)
    geometry = _validate.check_geometry(features.shape, masks.shape, *params)
    _validate.check_grad_output_shape(grad_output.shape, geometry)
    if not uses_kernels(features.device):
        return _reference.carafe_backward(grad_output, features, masks, *params)
    grad_features = torch.empty_like(features)
    grad_masks = torch.empty_like(masks)
    device, stream = _device_and_stream(features.device)
    _launch.launch_backward(
        geometry,
        _ref(grad_output),
        _ref(features),
        _ref(masks),
        _ref(grad_features),
        _ref(grad_masks),
        device,
        stream,
    )
    return grad_features, grad_masks


@carafe_backward.register_fake
def _carafe_backward_fake(
    grad_output, features, masks, kernel_size, group_size, scale_factor, stride=1, dilation=1
):
    return torch.empty_like(features), torch.empty_like(masks)


def _setup_context(ctx, inputs, output) -> None:
    """Save the two tensors; the int parameters after them (3 for the fused op,
    5 for the plain ones) are kept as they came."""
    features, masks, *params = inputs
    ctx.save_for_backward(features, masks)
    ctx.params = tuple(params)


def _backward(ctx, grad_output):
    features, masks = ctx.saved_tensors
    grad_features, grad_masks = carafe_backward(grad_output, features, masks, *ctx.params)
    return grad_features, grad_masks, *(None,) * len(ctx.params)


carafe_forward.register_autograd(_backward, setup_context=_setup_context)


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
            grad_grad_output = carafe_forward(grad_grad_features, masks, *params)
        if needs_masks:
            grad_masks = carafe_backward(grad_output, grad_grad_features, masks, *params)[1]
    if grad_grad_masks is not None:
        if needs_grad_output:
            term = carafe_forward(features, grad_grad_masks, *params)
            grad_grad_output = term if grad_grad_output is None else grad_grad_output + term
        if needs_features:
            grad_features = carafe_backward(grad_output, features, grad_grad_masks, *params)[0]
    return grad_grad_output, grad_features, grad_masks, *(None,) * len(params)


carafe_backward.register_autograd(_backward_of_backward, setup_context=_setup_backward_context)
for _op in (carafe_forward, carafe_backward):
    _lazy_dynamo.defer_dynamo_import(_op)


# Autocast: floating inputs are cast to the region's dtype (fp64 is left alone, as
# autocast does for its own ops) and the op runs with autocast off. The dtype is
# read when the op runs, so one registration serves fp16 and bf16 regions alike;
# torch.library.register_autocast would fix a single dtype per device.
_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")
_autocast_library = torch.library.Library("carafe_cupy", "FRAGMENT")


def _autocast_forward(device_type: str):
    def kernel(features, masks, kernel_size, group_size, scale_factor, stride=1, dilation=1):
        dtype = torch.get_autocast_dtype(device_type)

        def cast(tensor: torch.Tensor) -> torch.Tensor:
            eligible = (
                tensor.is_floating_point()
                and tensor.device.type == device_type
                and tensor.dtype != torch.float64
            )
            return tensor.to(dtype) if eligible else tensor

        with torch.autocast(device_type, enabled=False):
            return carafe_forward(
                cast(features),
                cast(masks),
                kernel_size,
                group_size,
                scale_factor,
                stride,
                dilation,
            )

    return kernel


for _device_type in _AUTOCAST_DEVICE_TYPES:
    _autocast_library.impl(
        "carafe_forward", _autocast_forward(_device_type), f"Autocast{_device_type.upper()}"
    )


def _check_tensors(where: str = "carafe", **tensors: object) -> None:
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"{where}: {name} must be a torch.Tensor like the other inputs, "
                f"got {type(tensor).__module__}.{type(tensor).__name__}"
            )
        _validate.check_dtype(name, dtype_name(tensor.dtype), where)
    devices = {name: tensor.device for name, tensor in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"{where}: all tensors must be on one device, got {listing}")


def _as_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # no cast node at all when none is needed keeps traced graphs minimal
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


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
    _check_tensors(where, features=features, **{_validate.weights_name(where): kernels})
    dtype = torch.promote_types(features.dtype, kernels.dtype)
    params = (kernel_size, group_size, scale_factor, stride, dilation)
    if _decomposed.exporting_to_onnx():
        # ONNX has no counterpart of the custom op: export the standard-op formula,
        # with sizes left symbolic (the full shape check would fix them to ints)
        return _decomposed.carafe_forward(
            _as_dtype(features, dtype),
            _as_dtype(kernels, dtype),
            *_validate.check_reassembly_params(*params, where),
        )
    geometry = _validate.check_geometry(features.shape, kernels.shape, *params, where=where)
    return carafe_forward(
        _as_dtype(features, dtype), _as_dtype(kernels, dtype), *_op_params(geometry)
    )


def carafe(
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> torch.Tensor:
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
    _check_tensors(where, grad_output=grad_output, features=features, **{name: kernels})
    params = (kernel_size, group_size, scale_factor, stride, dilation)
    geometry = _validate.check_geometry(features.shape, kernels.shape, *params, where=where)
    _validate.check_grad_output_shape(grad_output.shape, geometry, where)
    dtype = torch.promote_types(features.dtype, kernels.dtype)
    # Gradients as plain values: this op has no derivative of its own, so the
    # results must not join the caller's graph (a later .backward() would fail).
    with torch.no_grad():
        grad_features, grad_kernels = carafe_backward(
            grad_output.to(dtype), features.to(dtype), kernels.to(dtype), *_op_params(geometry)
        )
    return grad_features.to(features.dtype), grad_kernels.to(kernels.dtype)


def normalize_logits(logits: torch.Tensor, kernel_size: int, scale_factor: int) -> torch.Tensor:
    """CARAFEPack's kernel normaliser: pixel_shuffle, then softmax over each group's k*k taps."""
    masks = torch.nn.functional.pixel_shuffle(logits, scale_factor)
    batch, mask_channels, height, width = masks.shape
    taps = kernel_size * kernel_size
    masks = masks.view(batch, mask_channels // taps, taps, height, width)
    masks = masks.softmax(dim=2, dtype=masks.dtype)
    return masks.view(batch, mask_channels, height, width).contiguous()


# the fused-normaliser ops register with these
from . import fused as _torch_fused  # noqa: E402, F401
