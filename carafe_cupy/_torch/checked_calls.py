"""A call's checks, cached per signature.

What the checks of a call conclude depends only on its signature: the tensors'
shapes, strides, dtypes and devices and the int parameters. The first call of a
signature runs the checks (``_core.validate`` and the torch side's, unchanged)
and keeps what they give; later calls of that signature look it up. A call that
fails a check is not kept, so it fails again, with the same error, every time.
Only the eager fast path (``_torch.eager``) uses this: while tracing or compiling,
sizes may be symbolic and the checks run as they are.
"""

from __future__ import annotations

import torch

from .._core import validate as _validate
from .._core.geometry import Geometry
from .._cpu import path as _cpu_path
from .common import check_tensors, dtype_name

_MAX_SIGNATURES = 512  # then start afresh: a long-running process sees few shapes
_UNCHECKED = object()


class CheckedForward:
    """A forward signature that passed its checks, and what the call needs of it."""

    __slots__ = (
        "geometry",
        "params",
        "op_params",
        "output_shape",
        "memory_format",
        "dtype",
        "device",
        "simulated",
        "where",
        "grad_output_checked",
        "forward_capacity",
        "backward_capacity",
        "launches",
    )

    def __init__(
        self, geometry: Geometry, params: tuple[int, ...], features: torch.Tensor, where: str
    ):
        self.geometry = geometry
        self.params = params  # kernel size, group, scale, stride, dilation
        # the custom ops' int arguments: stride and dilation only where they are not 1
        self.op_params = params if not geometry.is_carafe else params[:3]
        g = geometry
        self.output_shape = (g.batch, g.channels, g.out_height, g.out_width)
        # None for the default (contiguous) layout, which torch.empty is not told
        memory_format = _cpu_path.output_memory_format(features)
        self.memory_format = None if memory_format == torch.contiguous_format else memory_format
        self.dtype = dtype_name(features.dtype)
        self.device = features.device  # every tensor's: it is part of the signature
        # whether the kernels run on the simulator: on the fast path only CPU tensors
        # run there, and only with it on (``common.uses_kernels``)
        self.simulated = self.device.type == "cpu"
        self.where = where
        self.grad_output_checked = False  # a grad_output of the output's shape passed
        # the device memory (bytes) the results last fitted, forward and backward
        self.forward_capacity: object = _UNCHECKED
        self.backward_capacity: object = _UNCHECKED
        # the launcher's prepared calls for this signature, by the eager path's key
        self.launches: dict[tuple, object] = {}


_forward_signatures: dict[tuple, CheckedForward] = {}


def checked_forward(
    where: str, features: torch.Tensor, masks: torch.Tensor, params: tuple[int, ...]
) -> CheckedForward:
    """The checks of ``reassemble`` (or ``carafe``, by ``where``) for these tensors and
    the five int parameters (kernel size, group, scale, stride, dilation), run once
    per signature. ``params`` must be ints (a bool equals 1 as a key but is refused
    by the checks), and both tensors one dtype."""
    key = (
        where,
        params,
        features.shape,
        features.stride(),
        features.dtype,
        features.device,
        masks.shape,
        masks.stride(),
        masks.dtype,
        masks.device,
    )
    checked = _forward_signatures.get(key)
    if checked is None:
        check_tensors(where, features=features, **{_validate.weights_name(where): masks})
        geometry = _validate.check_geometry(features.shape, masks.shape, *params, where=where)
        checked = CheckedForward(geometry, params, features, where)
        if len(_forward_signatures) >= _MAX_SIGNATURES:
            _forward_signatures.clear()
        _forward_signatures[key] = checked
    return checked


def check_forward_memory(checked: CheckedForward, features: torch.Tensor) -> None:
    """That the forward's output fits all the memory of the device, as the public
    function checks it before allocating: again whenever the device's memory reads
    differently (a GPU's total is read once; the host's, with its cgroup limit, each
    time)."""
    device = checked.device
    capacity = _cpu_path.device_memory_bytes(device)
    if capacity != checked.forward_capacity:
        inputs = (("features", features),)
        where = checked.where
        _cpu_path.check_memory(checked.geometry, features.dtype, device, False, where, casts=inputs)
        checked.forward_capacity = capacity


def check_grad_output(
    checked: CheckedForward, grad_output: torch.Tensor, features: torch.Tensor
) -> None:
    """What the backward op checks before it allocates: grad_output's shape against
    the forward ``checked`` (until a grad_output of the output's shape has passed),
    and that the gradients fit the device's memory (as for the forward); the caller
    sees to grad_output's dtype and device."""
    if not (checked.grad_output_checked and grad_output.shape == checked.output_shape):
        _validate.check_grad_output_shape(grad_output.shape, checked.geometry)
        checked.grad_output_checked = grad_output.shape == checked.output_shape
    device = checked.device
    capacity = _cpu_path.device_memory_bytes(device)
    if capacity != checked.backward_capacity:
        _cpu_path.check_memory(checked.geometry, features.dtype, device, backward=True)
        checked.backward_capacity = capacity


def clear() -> None:
    """Forget every checked signature (tests)."""
    _forward_signatures.clear()
