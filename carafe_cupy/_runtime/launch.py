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
import operator
from typing import Any

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
from .arguments import ArgumentLayout, KernelArguments

_NO_TENSOR = TensorRef(0, (0, 0, 0, 0), "float32")


_simulator_switch = _env.reader("CARAFE_CUPY_SIMULATOR", _env.boolean)  # read per launch
# ``CARAFE_CUPY_SIMULATOR`` as a boolean (ValueError naming it when it is not one):
# the reader itself, a call less on every public call
simulator_enabled = _simulator_switch


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
) -> KernelArguments:
    """The kernel's arguments: pointers, sizes, every tensor's strides, tiling;
    all 64-bit so no size or offset is ever truncated, packed in one buffer."""
    slots = [_NO_TENSOR if index is None else tensors[index] for index in planned.operands]
    layout = _argument_layout(planned, geometry, tuple(ref.strides for ref in slots))
    return KernelArguments(layout, tuple(ref.pointer for ref in slots))


@functools.lru_cache(maxsize=1024)
def _argument_layout(planned: Launch, geometry: Geometry, strides: tuple) -> ArgumentLayout:
    """The words after the pointers, built once per plan, geometry and layout."""
    # the general kernels also take stride and dilation; the tiled ones run only without
    sizes = geometry.general_sizes if planned.module == KERNEL_MODULE else geometry.sizes
    fixed = tuple(sizes)
    for tensor_strides in strides:
        fixed += tuple(tensor_strides)
    return ArgumentLayout(len(strides), fixed + tuple(planned.tiling))


def _run(
    launches: tuple[Launch, ...],
    geometry: Geometry,
    tensors: tuple[TensorRef | None, ...],
    device: int,
    stream: int,
) -> None:
    _start([(p, launch_arguments(p, geometry, tensors)) for p in launches], device, stream)


def _start(steps: list, device: int, stream: int) -> None:
    """Start each (planned launch, its arguments) in order."""
    for planned, args in steps:
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


class PreparedCall:
    """The launches of one call signature (geometry, dtype, layout, variant, target),
    each with its argument layout: a call only supplies its tensors' pointers, in
    the operand order of the matching ``launch_*`` function (0 for an absent one)."""

    __slots__ = ("steps", "simulated")

    def __init__(
        self, launches: tuple[Launch, ...], geometry: Geometry, refs: tuple, simulated: bool
    ) -> None:
        # which runtime launches: part of the call signature, so not read per launch
        self.simulated = simulated
        steps = []
        for planned in launches:
            slots = [_NO_TENSOR if index is None else refs[index] for index in planned.operands]
            layout = _argument_layout(planned, geometry, tuple(ref.strides for ref in slots))
            # the pointers in slot order; -1 picks the 0 appended for "no tensor"
            picks = tuple(-1 if index is None else index for index in planned.operands)
            pick = operator.itemgetter(*picks)
            # what launch() takes, unpacked once: a call reads no attribute of the plan
            steps.append(
                (
                    planned.kernel,
                    planned.grid,
                    planned.block,
                    layout,
                    pick,
                    planned.shared_mem,
                    planned.module,
                )
            )
        self.steps = tuple(steps)

    def run(self, pointers: tuple[int, ...], device: int, stream: int) -> None:
        pointers += (0,)
        runtime = _SIMULATED if self.simulated else _cupy_runtime.get_runtime()
        for kernel, grid, block, layout, pick, shared_mem, module in self.steps:
            launch(
                kernel,
                grid,
                block,
                KernelArguments(layout, pick(pointers)),
                shared_mem,
                device,
                stream,
                module,
                runtime,
            )


_PLANNERS = {"forward": plan_forward, "backward": plan_backward}


def prepare(
    operation: str,
    geometry: Geometry,
    dtype: str,
    layout: tuple[tuple[tuple[int, ...], int] | None, ...],
    device: int,
) -> PreparedCall:
    """The prepared ``operation`` ("forward" or "backward", operands as in
    :func:`launch_forward` / :func:`launch_backward`) for tensors of ``dtype`` with
    ``layout``: each operand's (element strides, pointer % 16), or None if absent.
    Cached per call signature, the requested variant and the target."""
    simulated = simulator_enabled()
    return _prepared(operation, geometry, dtype, layout, requested_variant(), device, simulated)


@functools.lru_cache(maxsize=512)
def _prepared(
    operation: str,
    geometry: Geometry,
    dtype: str,
    layout: tuple,
    variant: str,
    device: int,
    simulated: bool,
) -> PreparedCall:
    # a pointer's alignment is all a plan reads of it
    refs = tuple(None if item is None else TensorRef(item[1], item[0], dtype) for item in layout)
    target = DEFAULT_TARGET if simulated else _device_target(device)
    launches = _PLANNERS[operation](geometry, *refs, target)
    return PreparedCall(launches, geometry, refs, simulated)


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


class _Simulated:
    """The CPU simulator behind the GPU runtime's launch signature (one device, no
    streams); it takes the arguments as numpy scalars read back from the packed
    buffer, as a driver reads them."""

    def launch(
        self,
        module_name: str,
        source: str,
        kernel_name: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: KernelArguments,
        shared_mem: int = 0,
        device: int = 0,
        stream: int = 0,
    ) -> None:
        from .._sim.runtime import get_runtime as simulator_runtime

        runtime = simulator_runtime()
        scalars = args.read_back() if isinstance(args, KernelArguments) else tuple(args)
        runtime.launch(module_name, source, kernel_name, grid, block, scalars, shared_mem)


_SIMULATED = _Simulated()


def launch(
    kernel_name: str,
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    args: KernelArguments,
    shared_mem: int,
    device: int,
    stream: int,
    module_name: str = KERNEL_MODULE,
    runtime: Any = None,
) -> None:
    """The one place a kernel starts: on the GPU, or on the CPU simulator.

    Everything before this (kernel choice, grid, packed arguments, outputs) is the
    same for both, so the simulator exercises the real launch code. ``runtime``:
    the one a prepared call already picked (the simulator's stand-in or the CuPy
    runtime), else picked here by ``CARAFE_CUPY_SIMULATOR``.
    """
    if _launch_record.active:  # a call less per launch when nothing records
        _launch_record.note_launch(module_name, kernel_name, block, args, requested_variant)
    source = _sources.kernel_source(module_name)
    if runtime is None:
        runtime = _SIMULATED if _simulator_switch() else _cupy_runtime.get_runtime()
    runtime.launch(module_name, source, kernel_name, grid, block, args, shared_mem, device, stream)
