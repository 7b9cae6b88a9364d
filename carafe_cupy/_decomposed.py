"""CARAFE as a composition of standard tensor operations, for exporters.

Exporters that do not know the ``carafe_cupy::carafe_forward`` op (ONNX, or any
backend consuming an ``ExportedProgram``) can replace it with this function via
``ExportedProgram.run_decompositions(carafe_cupy.decompositions())``. It is the
formula written out tap by tap, with no in-place updates, so it traces to
Pad, Slice, Reshape, Mul and Add:

    out[n, g, c, h, a, w, b] = sum over taps (i, j) of
        masks[n, g, i*k + j, h, a, w, b] * padded[n, g, c, h + i, w + j]

where ``padded`` is the features with ``r = (k - 1) // 2`` zeros on each side,
(h, a) indexes output row ``h*s + a`` and (w, b) output column ``w*s + b``.
Sizes are read from the tensors, so under ``torch.export`` (and the ONNX
exporters) they stay symbolic where the caller marks them dynamic.

:func:`carafe_cupy.carafe` and the modules take this path by themselves while
``torch.onnx.export`` runs, so a plain export needs no extra step.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from ._reference import accumulation_dtype, output_memory_format


def carafe_forward(
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> torch.Tensor:
    batch, channels, height, width = features.shape
    k, s = kernel_size, scale_factor
    radius = (k - 1) // 2
    acc = accumulation_dtype(features.dtype)

    padded = F.pad(features.to(acc), (radius, radius, radius, radius))
    channels_per_group = channels // group_size
    padded = padded.reshape(
        batch, group_size, channels_per_group, height + 2 * radius, width + 2 * radius
    )
    # (N, G, k*k, H, s, W, s): one mask value per tap, output sub-pixel (a, b) and pixel
    mask_taps = masks.to(acc).reshape(batch, group_size, k * k, height, s, width, s)

    out = None
    for i in range(k):
        for j in range(k):
            # the input pixel each output tile reads at this tap, broadcast over (a, b)
            window = padded[:, :, :, i : i + height, j : j + width]
            window = window.reshape(batch, group_size, channels_per_group, height, 1, width, 1)
            mask = mask_taps[:, :, i * k + j].unsqueeze(2)
            term = window * mask
            out = term if out is None else out + term

    out = out.reshape(batch, channels, height * s, width * s)
    return out.to(dtype=features.dtype, memory_format=output_memory_format(features))


def exporting_to_onnx() -> bool:
    """True while ``torch.onnx.export`` traces (either exporter).

    ``torch.onnx`` is not loaded by ``import torch``; when nothing has loaded
    it, no export can be running, and it is not imported just to ask.
    """
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


def decompositions() -> dict:
    """``{carafe_cupy::carafe_forward: carafe_forward}`` for ``run_decompositions``."""
    from . import _torch_ops  # noqa: F401  (registers the op)

    return {torch.ops.carafe_cupy.carafe_forward.default: carafe_forward}
