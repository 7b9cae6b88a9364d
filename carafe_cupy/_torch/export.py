"""CARAFE (and its strided, dilated form) as standard tensor operations, for exporters.

Exporters that do not know the ``carafe_cupy::carafe_forward`` op (ONNX, or any
backend consuming an ``ExportedProgram``) can replace it with this function via
``ExportedProgram.run_decompositions(carafe_cupy.decompositions())``. It is the
formula written out tap by tap, with no in-place updates, so it traces to
Pad, Slice, Reshape, Mul and Add:

    out[n, g, c, h, a, w, b] = sum over taps (i, j) of
        masks[n, g, i*k + j, h, a, w, b] * padded[n, g, c, h*t + i*d, w*t + j*d]

where ``padded`` is the features with ``r*d`` zeros on each side (r = (k - 1) // 2,
t the stride, d the dilation), (h, a) indexes output row ``h*s + a`` and (w, b)
output column ``w*s + b``; each tap's window is a strided slice of ``padded``.
Sizes are read from the tensors, so under ``torch.export`` (and the ONNX
exporters) they stay symbolic where the caller marks them dynamic.

:func:`carafe_cupy.carafe` and the modules take this path by themselves while
``torch.onnx.export`` runs, so a plain export needs no extra step.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from .._cpu.path import accumulation_dtype, output_memory_format
from . import ops as _ops  # noqa: F401 (registers the op this replaces)


def decomposed_forward(
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
    stride: int = 1,
    dilation: int = 1,
) -> torch.Tensor:
    batch, channels, height, width = features.shape
    k, s, t, d = kernel_size, scale_factor, stride, dilation
    reach = (k - 1) // 2 * d
    rows, cols = (height + t - 1) // t, (width + t - 1) // t  # window centers
    acc = accumulation_dtype(features.dtype)

    padded = F.pad(features.to(acc), (reach, reach, reach, reach))
    channels_per_group = channels // group_size
    padded = padded.reshape(
        batch, group_size, channels_per_group, height + 2 * reach, width + 2 * reach
    )
    # (N, G, k*k, Hc, s, Wc, s): one mask value per tap, output sub-pixel (a, b) and center
    mask_taps = masks.to(acc).reshape(batch, group_size, k * k, rows, s, cols, s)

    out = None
    for i in range(k):
        for j in range(k):
            # the input pixel each output tile reads at this tap, broadcast over (a, b)
            source_rows = slice(i * d, i * d + (rows - 1) * t + 1, t)
            source_cols = slice(j * d, j * d + (cols - 1) * t + 1, t)
            window = padded[:, :, :, source_rows, source_cols]
            window = window.reshape(batch, group_size, channels_per_group, rows, 1, cols, 1)
            mask = mask_taps[:, :, i * k + j].unsqueeze(2)
            term = window * mask
            out = term if out is None else out + term

    out = out.reshape(batch, channels, rows * s, cols * s)
    return out.to(dtype=features.dtype, memory_format=output_memory_format(features))


def exporting_to_onnx() -> bool:
    """True while ``torch.onnx.export`` traces (either exporter).

    ``torch.onnx`` is not loaded by ``import torch``; when nothing has loaded
    it, no export can be running, and it is not imported just to ask.
    """
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


# What torch.compiler.assume_constant_result does, without importing torch._dynamo
# here: a compilation reads the answer once, while tracing, instead of tracing the
# lookup in sys.modules, which an import elsewhere (a finalizer, another thread)
# may change while the compiler iterates over it.
exporting_to_onnx._dynamo_marked_constant = True  # type: ignore[attr-defined]


def decompositions() -> dict:
    """``{carafe_cupy::carafe_forward: decomposed_forward}`` for ``run_decompositions``."""
    return {torch.ops.carafe_cupy.carafe_forward.default: decomposed_forward}
