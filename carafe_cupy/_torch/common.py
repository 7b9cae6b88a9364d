"""What every torch module here shares: dtype names, tensor references for the
launcher, which backend a device takes (with its one-time warnings), output
allocation, input checks and CARAFEPack's logit normaliser. Registers no op."""

from __future__ import annotations

import functools
import warnings

import torch

from .._core import validate as _validate
from .._core.errors import install_hint
from .._cpu import jit_dispatch as _jit_dispatch
from .._cpu import path as _cpu_path
from .._cpu.path import device_type
from .._runtime import cupy_runtime as _cupy_runtime
from .._runtime import launch as _launch

_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def tensor_ref(tensor: torch.Tensor) -> _launch.TensorRef:
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
            f"the kernels with {install_hint('cuda13')} or {install_hint('cuda12')} (matching "
            "your CUDA driver; cuda12 for sm_70 and older GPUs, which NVRTC 13 no longer "
            "targets).",
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


_failed_devices: set[int] = set()


def kernels_failed(device: torch.device, error: Exception) -> None:
    """A launch found the kernels unusable on ``device`` (a compile or load failure
    the availability check did not see): warn once, then take the PyTorch path there."""
    index = device.index if device.index is not None else 0
    if index in _failed_devices:
        return
    _failed_devices.add(index)
    warnings.warn(
        f"{error} Until then, CUDA tensors on cuda:{index} take the slower pure-PyTorch path.",
        RuntimeWarning,
        stacklevel=3,
    )


def uses_kernels(device: torch.device) -> bool:
    """Whether tensors on this device run the ``.cu`` kernels (GPU or simulator)."""
    if _launch.simulator_enabled():
        return device_type(device) == "cpu"
    index = device.index if device.index is not None else 0
    return (
        device_type(device) == "cuda"
        and _gpu_kernels_available()
        and _kernels_target(index)
        and index not in _failed_devices
    )


def backend_name(device: torch.device) -> str:
    if _launch.simulator_enabled() and device.type == "cpu":
        return "cuda kernels on the CPU simulator"
    if device.type == "cuda" and _cupy_runtime.gpu_kernels_available(device.index):
        return "cuda kernels (NVRTC via CuPy)"
    if device.type == "cpu":
        return _jit_dispatch.describe()  # the compiled kernels or pure PyTorch, and why
    return f"pure PyTorch on {device.type}"


def device_and_stream(device: torch.device) -> tuple[int, int]:
    if device_type(device) != "cuda":
        return 0, 0
    return device.index, torch.cuda.current_stream(device).cuda_stream


def empty_output(features: torch.Tensor, scale_factor: int, stride: int = 1) -> torch.Tensor:
    batch, channels, height, width = features.shape
    rows, cols = -(-height // stride), -(-width // stride)  # window centers
    return torch.empty(
        (batch, channels, rows * scale_factor, cols * scale_factor),
        dtype=features.dtype,
        device=features.device,
        memory_format=_cpu_path.output_memory_format(features),
    )


def check_tensors(where: str = "carafe", **tensors: object) -> None:
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


def check_op_tensors(where: str, **tensors: torch.Tensor) -> None:
    """The tensors of one op call share the first one's dtype (a floating one) and
    device: a kernel reads every tensor as that dtype, on that device. Raw
    ``torch.ops.carafe_cupy`` calls reach the ops without the public checks."""
    (first_name, first), *others = tensors.items()
    _validate.check_dtype(first_name, dtype_name(first.dtype), where)
    for name, tensor in others:
        if tensor.dtype != first.dtype:
            raise TypeError(
                f"{where}: {name} must have the dtype of {first_name}, {first.dtype}, "
                f"got {tensor.dtype}"
            )
        if tensor.device != first.device:
            raise ValueError(
                f"{where}: {name} must be on the device of {first_name}, {first.device}, "
                f"got {tensor.device}"
            )


def as_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # no cast node at all when none is needed keeps traced graphs minimal
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def normalize_logits(logits: torch.Tensor, kernel_size: int, scale_factor: int) -> torch.Tensor:
    """CARAFEPack's kernel normaliser: pixel_shuffle, then softmax over each group's k*k taps."""
    masks = torch.nn.functional.pixel_shuffle(logits, scale_factor)
    batch, mask_channels, height, width = masks.shape
    taps = kernel_size * kernel_size
    masks = masks.view(batch, mask_channels // taps, taps, height, width)
    masks = masks.softmax(dim=2, dtype=masks.dtype)
    return masks.view(batch, mask_channels, height, width).contiguous()
