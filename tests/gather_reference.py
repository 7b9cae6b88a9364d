"""A vectorised float64 CARAFE in NumPy, for property tests (much faster than naive.py).

Independent of ``carafe_cupy._cpu.path``: it works in NCHW, computes every
output's source index per tap, selects with ``np.where`` instead of padding,
and scatters feature gradients with ``np.add.at``. Taps outside the input are
skipped (not multiplied by zero), as in naive.py, so Inf/NaN in a mask or
gradient there does not reach the result.
"""

from __future__ import annotations

import numpy as np


def _out_shape(height: int, width: int, scale_factor: int, stride: int) -> tuple[int, int]:
    return -(-height // stride) * scale_factor, -(-width // stride) * scale_factor


def _taps(height, width, kernel_size, scale_factor, stride=1, dilation=1):
    """Per tap (i, j): the source row/col of every output pixel and whether it is inside."""
    radius = (kernel_size - 1) // 2
    out_height, out_width = _out_shape(height, width, scale_factor, stride)
    out_rows = np.arange(out_height) // scale_factor * stride
    out_cols = np.arange(out_width) // scale_factor * stride
    for i in range(kernel_size):
        rows = out_rows + (i - radius) * dilation
        rows_inside = (rows >= 0) & (rows < height)
        for j in range(kernel_size):
            cols = out_cols + (j - radius) * dilation
            cols_inside = (cols >= 0) & (cols < width)
            inside = rows_inside[:, None] & cols_inside[None, :]
            yield (
                i * kernel_size + j,
                np.clip(rows, 0, height - 1)[:, None],
                np.clip(cols, 0, width - 1)[None, :],
                inside,
            )


def gather_carafe(features, masks, kernel_size, group_size, scale_factor, stride=1, dilation=1):
    features = np.asarray(features, dtype=np.float64)
    masks = np.asarray(masks, dtype=np.float64)
    batch, channels, height, width = features.shape
    taps = kernel_size * kernel_size
    group_of_channel = np.arange(channels) // (channels // group_size)
    output = np.zeros((batch, channels, *_out_shape(height, width, scale_factor, stride)))
    taps_of = _taps(height, width, kernel_size, scale_factor, stride, dilation)
    with np.errstate(invalid="ignore", over="ignore"):
        for tap, rows, cols, inside in taps_of:
            gathered = features[:, :, rows, cols]
            weights = masks[:, group_of_channel * taps + tap]
            output += np.where(inside, weights * gathered, 0.0)
    return output


def gather_carafe_backward(
    grad_output, features, masks, kernel_size, group_size, scale_factor, stride=1, dilation=1
):
    grad_output = np.asarray(grad_output, dtype=np.float64)
    features = np.asarray(features, dtype=np.float64)
    masks = np.asarray(masks, dtype=np.float64)
    batch, channels, height, width = features.shape
    taps = kernel_size * kernel_size
    out_shape = _out_shape(height, width, scale_factor, stride)
    group_of_channel = np.arange(channels) // (channels // group_size)
    grad_features = np.zeros((batch, channels, height * width))
    grad_masks = np.zeros_like(masks)
    with np.errstate(invalid="ignore", over="ignore"):
        for tap, rows, cols, inside in _taps(
            height, width, kernel_size, scale_factor, stride, dilation
        ):
            gathered = features[:, :, rows, cols]
            per_channel = np.where(inside, grad_output * gathered, 0.0)
            grad_masks[:, tap::taps] = per_channel.reshape(
                batch, group_size, channels // group_size, *out_shape
            ).sum(axis=2)
            weights = masks[:, group_of_channel * taps + tap]
            targets = np.broadcast_to(rows * width + cols, out_shape)[inside]
            contributions = (grad_output * weights)[:, :, inside]
            np.add.at(grad_features, (slice(None), slice(None), targets), contributions)
    return grad_features.reshape(features.shape), grad_masks
