"""Host time per public call, on this machine's CPU, with only the kernel launch
replaced by a no-op: everything else a GPU call does runs (argument checks, the
custom op's dispatch, autograd, output allocation, planning, marshalling).

Inputs are CPU tensors (numpy arrays for the array front end) of the problem's
shape with ``CARAFE_CUPY_SIMULATOR=1``, which takes the kernel path on the CPU:
the launch is the one step that differs from a GPU call, and it is the one
stubbed. What a launch itself costs through CuPy is not measured here
(``hardware.CUPY_LAUNCH_US``, an assumption); torch's CPU allocator stands in
for its caching CUDA allocator.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from unittest import mock

import numpy as np

from .._plan.planner import Geometry
from .._runtime import launch as _launch
from .traffic import role_shape


@contextlib.contextmanager
def launch_stubbed():
    """The simulator's kernel path, its launches doing nothing; counts them."""
    calls = []
    simulator = mock.patch.dict(os.environ, {"CARAFE_CUPY_SIMULATOR": "1"})
    stub = mock.patch.object(_launch, "launch", lambda *args, **kwargs: calls.append(args[0]))
    with simulator, stub:
        yield calls


@dataclass(frozen=True)
class HostTimes:
    """µs of CPU time per call, best of five batches."""

    torch_forward: float  # carafe_cupy.carafe (or reassemble) on torch tensors
    torch_forward_backward: float  # the same and its backward through autograd
    array_forward: float  # the array front end (numpy under the simulator)
    launches_forward: int  # kernel launches per call
    launches_backward: int


def _best_of_five(call: Callable[[], object], calls: int) -> float:
    """µs per call: the process's CPU time, not wall time, so that other processes
    on a busy machine do not count; the best of five batches."""
    call()  # the first call plans; later ones hit the cache
    samples = []
    for _ in range(5):
        start = time.process_time()
        for _ in range(max(1, calls // 5)):
            call()
        samples.append((time.process_time() - start) / max(1, calls // 5) * 1e6)
    return min(samples)


def host_times(geometry: Geometry, dtype: str, calls: int = 1000) -> HostTimes:
    """Time the public calls for ``geometry`` with the launch stubbed."""
    import torch

    import carafe_cupy

    g = geometry
    args = (g.kernel_size, g.group_size, g.scale_factor, g.stride, g.dilation)
    torch_dtype = getattr(torch, dtype)
    features = torch.zeros(role_shape("features", g), dtype=torch_dtype, requires_grad=True)
    masks = torch.zeros(role_shape("masks", g), dtype=torch_dtype, requires_grad=True)
    grad = torch.zeros(role_shape("output", g), dtype=torch_dtype)
    numpy_dtype = np.float32 if dtype == "bfloat16" else np.dtype(dtype)  # numpy: no bf16
    array_features = np.zeros(role_shape("features", g), numpy_dtype)
    array_masks = np.zeros(role_shape("masks", g), numpy_dtype)

    # CARAFE proper through carafe(), other reassemblies through reassemble()
    if g.is_carafe:
        args = args[:3]
    function = carafe_cupy.carafe if g.is_carafe else carafe_cupy.reassemble

    def forward():
        with torch.no_grad():
            return function(features, masks, *args)

    def forward_backward():
        output = function(features, masks, *args)
        return torch.autograd.grad(output, (features, masks), grad)

    def array_forward():
        return function(array_features, array_masks, *args)

    with launch_stubbed() as launched:
        forward()
        launches_forward = len(launched)
        forward_backward()
        launches_backward = len(launched) - 2 * launches_forward
        return HostTimes(
            _best_of_five(forward, calls),
            _best_of_five(forward_backward, calls // 2),
            _best_of_five(array_forward, calls),
            launches_forward,
            launches_backward,
        )
