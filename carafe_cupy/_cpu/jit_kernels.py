"""Helpers the compiled CPU kernels share (the forward in ``jit_forward``, the two
gradients in ``jit_backward``), compiled by Numba (LLVM) and cached on disk.

Every tensor arrives as a flat 1-D array over its memory with its four element
strides, so one compiled kernel serves contiguous, channels_last, expanded and
other strided layouts alike, and nothing is copied. ``dims`` holds
(N, C, H, W, k, G, s, t, d): the sizes, kernel size, groups, scale, stride and
dilation.

A call computes one work item, (batch n, group g, band of rows [top, bottom)),
and writes only its own outputs, with a fixed order of summation: results are
the same bitwise for any thread count. The kernels release the GIL, so the
caller's threads run items side by side.
Within an item, the rows a loop reads are first gathered into small contiguous
scratch rows in the accumulation dtype, laid out so that the inner loops run
over output columns with unit stride (vectorised by LLVM), with their running
sums in vector registers.

With center (hc, wc), output (hc*s + a, wc*s + b) reads input
(hc*t + (i - r)*d, wc*t + (j - r)*d) at tap (i, j). Taps outside the input are
never multiplied into a result, so an Inf mask there does not become NaN.
"""

from __future__ import annotations

import numpy as np

from .jit_compile import helper

# Indices are unsigned (every index here is): Numba then skips its negative-index
# wraparound, which would otherwise keep LLVM from vectorising the loops.
U = np.uint64


@helper
def _geometry(dims):
    """radius, taps, center rows, output width, upsampled input width, channels per group."""
    width, k, groups, scale, stride = dims[3], dims[4], dims[5], dims[6], dims[7]
    rows = (dims[2] + stride - 1) // stride
    out_width = (width + stride - 1) // stride * scale
    return (k - 1) // 2, k * k, rows, out_width, width * scale, dims[1] // groups


@helper
def _tap_columns(j, radius, dims, out_width):
    """Output columns [lo, hi) whose tap column j lands inside the input, and where
    column x reads in the upsampled input row: x*t + offset."""
    width, scale, stride, dilation = dims[3], dims[6], dims[7], dims[8]
    shift = (j - radius) * dilation  # in input columns
    lo = max(0, -(shift // stride)) * scale
    hi = min(out_width // scale, (width - 1 - shift) // stride + 1) * scale
    return lo, hi, shift * scale
