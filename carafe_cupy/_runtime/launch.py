"""Launch the planned kernels.

Front ends describe their tensors as :class:`TensorRef` (raw pointer, element
strides, dtype name) and call :func:`launch_forward` / :func:`launch_backward`
and the fused pair. The planner (``_plan.planner``) chooses the kernels and launch
shapes; this module marshals the arguments and hands each launch to a runtime:
CuPy/NVRTC on a GPU (``_runtime.cupy_runtime``), or the CPU simulator when
``CARAFE_CUPY_SIMULATOR=1``.
"""

from __future__ import annotations

import functools

import numpy as np

from .._core import env as _env
from .._kernels import sources as _sources
from .._kernels.sources import KERNEL_MODULE
from .._plan import record as _launch_record
from .._plan.planner import (
    DEFAULT_TARGET,
    Geometry,
    Launch,
    PlanTarget,
    TensorRef,
    plan_backward,
    plan_forward,
    plan_fused_backward,
    plan_fused_forward,
    requested_variant,
)
from . import cupy_runtime as _cupy_runtime

_NO_TENSOR = TensorRef(0, (0, 0, 0, 0), "float32")


def simulator_enabled() -> bool:
    """``CARAFE_CUPY_SIMULATOR`` as a boolean (ValueError naming it when it is not one)."""
    return _env.flag("CARAFE_CUPY_SIMULATOR")


def plan_target(device: int) -> PlanTarget:
    """The GPU the plans are dealt to: the device's SM count and architecture, or
    the default (an H100) on the simulator."""
    return DEFAULT_TARGET if simulator_enabled() else _device_target(device)


@functools.lru_cache(maxsize=64)
def _device_target(device: int) -> PlanTarget:
    try:
        return PlanTarget(*_cupy_runtime.device_sms_and_arch(device))
    except Exception:  # no device to ask (planning without a GPU): the default
        return DEFAULT_TARGET


def launch_arguments(
    planned: Launch, geometry: Geometry, tensors: tuple[TensorRef | None, ...]
) -> tuple:
    """The kernel's arguments: pointers, sizes, every tensor's strides, tiling;
    all 64-bit so no size or offset is ever truncated."""
    slots = [_NO_TENSOR if index is None else tensors[index] for index in planned.operands]
    fixed = _fixed_arguments(planned, geometry, tuple(ref.strides for ref in slots))
    return tuple(np.uint64(ref.pointer) for ref in slots) + fixed


@functools.lru_cache(maxsize=1024)
def _fixed_arguments(planned: Launch, geometry: Geometry, strides: tuple) -> tuple:
    """The arguments after the pointers, built once per plan, geometry and layout."""
    # the general kernels also take stride and dilation; the tiled ones run only without
    sizes = geometry.general_sizes if planned.module == KERNEL_MODULE else geometry.sizes
    args = tuple(np.int64(size) for size in sizes)
    for tensor_strides in strides:
        args += tuple(np.int64(stride) for stride in tensor_strides)
    return args + tuple(np.int64(value) for value in planned.tiling)


def _run(
    launches: tuple[Launch, ...],
    geometry: Geometry,
    tensors: tuple[TensorRef | None, ...],
    device: int,
    stream: int,
) -> None:
    for planned in launches:
        args = launch_arguments(planned, geometry, tensors)
        launch(
            planned.kernel,
            planned.grid,
            planned.block,
            args,
            planned.shared_mem,
            device,
            stream,
            planned.module,
        )


def launch_forward(
    geometry: Geometry,
    features: TensorRef,
    masks: TensorRef,
    output: TensorRef,
    device: int = 0,
    stream: int = 0,
) -> None:
    """output = carafe(features, masks); all three share one dtype."""
    tensors = (features, masks, output)
    _run(plan_forward(geometry, *tensors, plan_target(device)), geometry, tensors, device, stream)


def launch_backward(
    geometry: Geometry,
    grad_output: TensorRef,
    features: TensorRef,
    masks: TensorRef,
    grad_features: TensorRef | None,
    grad_masks: TensorRef | None,
    device: int = 0,
    stream: int = 0,
) -> None:
    """Write whichever of grad_features / grad_masks is given."""
    tensors = (grad_output, features, masks, grad_features, grad_masks)
    _run(plan_backward(geometry, *tensors, plan_target(device)), geometry, tensors, device, stream)


def launch_fused_forward(
    geometry: Geometry,
    features: TensorRef,
    logits: TensorRef,
    output: TensorRef,
    device: int = 0,
    stream: int = 0,
) -> None:
    """output = carafe(features, softmax(pixel_shuffle(logits))), masks never stored."""
    tensors = (features, logits, output)
    launches = plan_fused_forward(geometry, *tensors, plan_target(device))
    _run(launches, geometry, tensors, device, stream)


def launch_fused_backward(
    geometry: Geometry,
    grad_output: TensorRef,
    features: TensorRef,
    logits: TensorRef,
    grad_features: TensorRef,
    grad_logits: TensorRef,
    device: int = 0,
    stream: int = 0,
) -> None:
    """Gradients of the fused forward with respect to features and raw logits."""
    launches = plan_fused_backward(geometry, grad_output.dtype, plan_target(device))
    tensors = (grad_output, features, logits, grad_features, grad_logits)
    _run(launches, geometry, tensors, device, stream)


def launch(
    kernel_name: str,
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    args: tuple,
    shared_mem: int,
    device: int,
    stream: int,
    module_name: str = KERNEL_MODULE,
) -> None:
    """The one place a kernel starts: on the GPU, or on the CPU simulator.

    Everything before this (kernel choice, grid, arguments, outputs) is the
    same for both, so the simulator exercises the real launch code.
    """
    _launch_record.note_launch(module_name, kernel_name, block, args, requested_variant)
    source = _sources.kernel_source(module_name)
    if simulator_enabled():
        from .._sim.runtime import get_runtime as simulator_runtime

        simulator_runtime().launch(module_name, source, kernel_name, grid, block, args, shared_mem)
    else:
        _cupy_runtime.get_runtime().launch(
            module_name, source, kernel_name, grid, block, args, shared_mem, device, stream
        )
