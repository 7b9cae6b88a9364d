"""Run the launcher and kernels directly on tensors framed by canaries.

Every tensor a kernel sees is a view into a larger buffer whose other elements
hold a canary NaN: a kernel that reads outside its tensor picks up NaN, and one
that writes outside it changes a canary, which :meth:`Framed.check_canaries`
turns into an assertion (not heap corruption). Outputs start as NaN too, so an
output the kernel never writes shows up as a wrong value.

The launches go through ``_runtime.launch.launch_*``: the real planner and argument
marshalling, on the CPU simulator when ``CARAFE_CUPY_SIMULATOR=1``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from carafe_cupy._plan import planner as _planner
from carafe_cupy._runtime import launch as _launch
from carafe_cupy._torch import common as _torch_common

from gather_reference import gather_carafe, gather_carafe_backward

# (variant, (N, C, H, W, k, G, s)): one small case per kernel family; pairs need even s.
VARIANT_CASES = [
    ("general", (1, 4, 3, 5, 3, 2, 2)),
    ("tiled", (1, 4, 3, 5, 5, 2, 3)),
    ("tiled", (1, 2, 2, 3, 7, 1, 2)),
    ("tiled_pair", (1, 4, 3, 5, 3, 2, 2)),
    ("fused", (1, 4, 3, 5, 3, 2, 2)),
]
BITS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}
# A NaN with a payload no arithmetic produces (arithmetic gives the default NaN).
CANARY_BITS = {
    torch.float64: 0x7FF4_2424_2424_2424,
    torch.float32: 0x7FA4_2424,
    torch.float16: 0x7D24,
    torch.bfloat16: 0x7FA4,
}


@dataclass
class Framed:
    """A 4-D view inside a canary-filled buffer."""

    buffer: torch.Tensor
    view: torch.Tensor
    outside: np.ndarray  # bool, buffer-shaped: True where the canaries are

    def ref(self) -> _launch.TensorRef:
        return _torch_common.tensor_ref(self.view)

    def check_canaries(self, what: str) -> None:
        bits = self.buffer.view(BITS[self.buffer.dtype]).numpy()
        changed = (bits != CANARY_BITS[self.buffer.dtype]) & self.outside
        assert not changed.any(), (
            f"{what}: {int(changed.sum())} writes outside the tensor "
            f"(first at buffer position {np.argwhere(changed)[0].tolist()})"
        )


def framed(shape, dtype: torch.dtype, pad: int = 2, values: torch.Tensor | None = None) -> Framed:
    """A view of ``shape`` with canaries on every side: one extra image and
    channel before and after, ``pad`` rows and columns around each plane. An
    odd ``pad`` puts the view at an odd element offset (pairs misaligned)."""
    n, c, h, w = shape
    buffer = torch.empty((n + 2, c + 2, h + 2 * pad, w + 2 * pad), dtype=dtype)
    buffer.view(BITS[dtype]).numpy().fill(CANARY_BITS[dtype])
    index = (slice(1, n + 1), slice(1, c + 1), slice(pad, pad + h), slice(pad, pad + w))
    view = buffer[index]
    outside = np.ones(buffer.shape, dtype=bool)
    outside[index] = False
    if values is None:
        view.fill_(float("nan"))
    else:
        view.copy_(values)
    return Framed(buffer, view, outside)


def framed_ref(shape, dtype: str, pad: int = 2) -> _launch.TensorRef:
    """The TensorRef :func:`framed` would give (same strides and alignment), for
    planning without memory: the address is made up."""
    n, c, h, w = shape
    strides = (
        (c + 2) * (h + 2 * pad) * (w + 2 * pad),
        (h + 2 * pad) * (w + 2 * pad),
        w + 2 * pad,
        1,
    )
    offset = strides[0] + strides[1] + pad * strides[2] + pad
    itemsize = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}[dtype]
    return _launch.TensorRef((1 << 20) + offset * itemsize, strides, dtype)


def _geometry(features: torch.Tensor, k: int, g: int, s: int, t=1, d=1) -> _launch.Geometry:
    return _launch.Geometry(*features.shape, k, g, s, t, d)


def _finish(outputs: dict[str, Framed], inputs: dict[str, Framed]) -> None:
    for what, tensor in {**outputs, **inputs}.items():
        tensor.check_canaries(what)


def run_forward(features, masks, k, g, s, pad=2, t=1, d=1):
    """output = reassemble(features, masks) by the kernels, every tensor framed
    (stride t, dilation d)."""
    f = framed(features.shape, features.dtype, pad, features)
    m = framed(masks.shape, masks.dtype, pad, masks)
    geometry = _geometry(features, k, g, s, t, d)
    out_shape = (geometry.batch, geometry.channels, geometry.out_height, geometry.out_width)
    out = framed(out_shape, features.dtype, pad)
    _launch.launch_forward(geometry, f.ref(), m.ref(), out.ref())
    _finish({"output": out}, {"features": f, "masks": m})
    return out.view.clone()


def run_backward(grad_output, features, masks, k, g, s, pad=2, t=1, d=1):
    """(grad_features, grad_masks) by the kernels, every tensor framed."""
    go = framed(grad_output.shape, grad_output.dtype, pad, grad_output)
    f = framed(features.shape, features.dtype, pad, features)
    m = framed(masks.shape, masks.dtype, pad, masks)
    gf = framed(features.shape, features.dtype, pad)
    gm = framed(masks.shape, masks.dtype, pad)
    geometry = _geometry(features, k, g, s, t, d)
    _launch.launch_backward(geometry, go.ref(), f.ref(), m.ref(), gf.ref(), gm.ref())
    _finish({"grad_features": gf, "grad_masks": gm}, {"grad_output": go, "features": f, "masks": m})
    return gf.view.clone(), gm.view.clone()


def run_fused(grad_output, features, logits, k, g, s, pad=2):
    """(output, grad_features, grad_logits) by the fused kernels, every tensor framed."""
    geometry = _geometry(features, k, g, s)
    assert _planner.fused_supported(geometry, _torch_common.dtype_name(features.dtype))
    go = framed(grad_output.shape, grad_output.dtype, pad, grad_output)
    f = framed(features.shape, features.dtype, pad, features)
    lg = framed(logits.shape, logits.dtype, pad, logits)
    out = framed(grad_output.shape, features.dtype, pad)
    gf = framed(features.shape, features.dtype, pad)
    gl = framed(logits.shape, logits.dtype, pad)
    _launch.launch_fused_forward(geometry, f.ref(), lg.ref(), out.ref())
    _launch.launch_fused_backward(geometry, go.ref(), f.ref(), lg.ref(), gf.ref(), gl.ref())
    outputs = {"output": out, "grad_features": gf, "grad_logits": gl}
    _finish(outputs, {"grad_output": go, "features": f, "logits": lg})
    return out.view.clone(), gf.view.clone(), gl.view.clone()


# ---------------------------------------------------------------- references


def reference(grad_output, features, masks, k, g, s, t=1, d=1):
    """float64 (output, grad_features, grad_masks) of the values the kernels saw."""
    go, f, m = (x.double().numpy() for x in (grad_output, features, masks))
    return (
        gather_carafe(f, m, k, g, s, t, d),
        *gather_carafe_backward(go, f, m, k, g, s, t, d),
    )


def fused_reference(grad_output, features, logits, k, g, s):
    """float64 (output, grad_features, grad_logits): softmax masks, then the gather reference."""
    logits = logits.double().requires_grad_()
    masks = _torch_common.normalize_logits(logits, k, s)
    output, grad_features, grad_masks = reference(grad_output, features, masks.detach(), k, g, s)
    (grad_logits,) = torch.autograd.grad(masks, logits, torch.from_numpy(grad_masks))
    return output, grad_features, grad_logits.numpy()


# ---------------------------------------------------------------- simulator


class _NoLaunch:
    """A runtime that launches nothing: the planner runs, the kernels do not."""

    def launch(self, *args, **kwargs) -> None:
        return None


@contextlib.contextmanager
def simulator(order: str | None = None, dry_run: bool = False) -> Iterator[None]:
    """Kernels on the CPU simulator, threads resumed in ``order`` between
    barriers (default: ``CARAFE_CUPY_SIM_ORDER``, else forward; seeded by
    ``CARAFE_CUPY_SIM_SEED``)."""
    from carafe_cupy._sim import runtime as sim_runtime

    order = order or os.environ.get("CARAFE_CUPY_SIM_ORDER", "forward")
    seed = int(os.environ.get("CARAFE_CUPY_SIM_SEED", "0") or 0)
    previous_flag = os.environ.get("CARAFE_CUPY_SIMULATOR")
    previous_runtime = sim_runtime._runtime
    os.environ["CARAFE_CUPY_SIMULATOR"] = "1"
    sim_runtime._runtime = _NoLaunch() if dry_run else sim_runtime.SimRuntime(order, seed)
    try:
        yield
    finally:
        sim_runtime._runtime = previous_runtime
        if previous_flag is None:
            del os.environ["CARAFE_CUPY_SIMULATOR"]
        else:
            os.environ["CARAFE_CUPY_SIMULATOR"] = previous_flag
