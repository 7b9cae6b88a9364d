"""CARAFE (and its strided, dilated form) as standard tensor operations, for exporters.

Exporters that do not know the ``carafe_cupy::carafe_forward`` op (ONNX, or any
backend consuming an ``ExportedProgram``) can replace it with this function via
``ExportedProgram.run_decompositions(carafe_cupy.decompositions())``. It traces to
Pad, Slice, Concat, Transpose, Reshape, MatMul and Add, with no in-place updates.

The s*s output pixels of one window center share its k*k input pixels, so each kernel
row ``i`` is one batched matrix product over all centers (n, h, w, g):

    out[n, h, w, g, a*s + b, :] += sum over j of
        masks_i[n, h, w, g, a*s + b, j] * window_i[n, h, w, g, j, :]

where ``window_i[n, h, w, g, j]`` is the group's channels of padded input pixel
(h*t + i*d, w*t + j*d) (channels last; ``padded`` is the features with ``r*d`` zeros on
each side, r = (k - 1) // 2, t the stride, d the dilation) and ``masks_i`` the masks of
kernel row i. In onnxruntime this runs several times faster than
multiplying each tap's window into the full output and adding
(``benchmarks/bench_onnx.py``). Sizes are read from the tensors,
so under ``torch.export`` (and the ONNX exporters) they stay symbolic where the caller
marks them dynamic.

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
    k, g, s, t, d = kernel_size, group_size, scale_factor, stride, dilation
    reach = (k - 1) // 2 * d
    rows, cols = (height + t - 1) // t, (width + t - 1) // t  # window centers
    acc = accumulation_dtype(features.dtype)
    channels_per_group = channels // g

    centers = batch * rows * cols * g
    padded = F.pad(features.to(acc), (reach, reach, reach, reach))
    # (N, Hp, Wp, G, C/G): channels last, so each center's pixels are contiguous rows
    padded = padded.reshape(
        batch, g, channels_per_group, height + 2 * reach, width + 2 * reach
    ).permute(0, 3, 4, 1, 2)
    # (k rows, N*Hc*Wc*G centers, s*s sub-pixels, k columns)
    mask_rows = (
        masks.to(acc)
        .reshape(batch, g, k, k, rows, s, cols, s)
        .permute(2, 0, 4, 6, 1, 5, 7, 3)
        .reshape(k, centers, s * s, k)
    )

    out = None
    for i in range(k):
        # (N, Hc, Wc, G, k, C/G): the k inputs of kernel row i of every center, built by
        # stacking (a new tensor), so merging its leading sizes below needs no stride checks,
        # which would fix a dynamic batch of 1 at export to 1
        window = torch.stack(
            [
                padded[
                    :,
                    i * d : i * d + (rows - 1) * t + 1 : t,
                    j * d : j * d + (cols - 1) * t + 1 : t,
                ]
                for j in range(k)
            ],
            dim=4,
        )
        # (N*Hc*Wc*G, s*s, C/G)
        term = torch.bmm(mask_rows[i], window.reshape(centers, k, channels_per_group))
        out = term if out is None else out + term

    out = out.reshape(batch, rows, cols, g, s, s, channels_per_group).permute(0, 3, 6, 1, 4, 2, 5)
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
