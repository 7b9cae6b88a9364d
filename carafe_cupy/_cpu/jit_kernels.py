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
scratch rows in the accumulation dtype, masks split by sub-pixel column
(``weights[a, tap, b, wc]`` for output (hc*s + a, wc*s + b)), so that the inner
loops run over window centers wc with unit stride (vectorised by LLVM).

With center (hc, wc), output (hc*s + a, wc*s + b) reads input
(hc*t + (i - r)*d, wc*t + (j - r)*d) at tap (i, j). Taps outside the input are
skipped, never read as zeros, so an Inf mask there does not become NaN.
"""

from __future__ import annotations

import numpy as np

from .jit_compile import helper
from .jit_dtypes import narrow, widen

# Indices are unsigned (every index here is): Numba then skips its negative-index
# wraparound, which would otherwise keep LLVM from vectorising the loops.
U = np.uint64


@helper
def _accumulate(total, at, weights, wt, source, lo, hi, stride, offset):
    """total[at + wc] += weights[wt + wc] * source[wc*stride + offset] over [lo, hi)."""
    if hi <= lo:
        return
    t0, w0, s0 = U(at + lo), U(wt + lo), U(lo * stride + offset)
    if stride == 1:
        for q in range(U(hi - lo)):
            total[t0 + q] += weights[w0 + q] * source[s0 + q]
    else:
        step = U(stride)
        for q in range(U(hi - lo)):
            total[t0 + q] += weights[w0 + q] * source[s0 + q * step]


@helper
def _tap_table(k, radius, dims, out_width):
    """Per tap column j: (lo, hi, offset) from _tap_columns, and the output columns
    [inner_lo, inner_hi) where every tap lands inside the input (empty unless stride 1)."""
    table = np.empty((k, 3), np.int64)
    inner_lo, inner_hi = 0, out_width
    for j in range(k):
        lo, hi, offset = _tap_columns(j, radius, dims, out_width)
        table[j, 0], table[j, 1], table[j, 2] = lo, hi, offset
        inner_lo, inner_hi = max(inner_lo, lo), min(inner_hi, hi)
    if dims[7] != 1 or inner_lo >= inner_hi:
        inner_lo = inner_hi = out_width  # no shared interior: one tap at a time
    return table, inner_lo, inner_hi


@helper
def _spread(target, at, weights, wt, values, vt, lo, hi, stride, offset):
    """target[at + wc*stride + offset] += weights[wt + wc] * values[vt + wc] over [lo, hi)."""
    if hi <= lo:
        return
    t0, w0, v0 = U(at + lo * stride + offset), U(wt + lo), U(vt + lo)
    if stride == 1:
        for q in range(U(hi - lo)):
            target[t0 + q] += weights[w0 + q] * values[v0 + q]
    else:
        step = U(stride)
        for q in range(U(hi - lo)):
            target[t0 + q * step] += weights[w0 + q] * values[v0 + q]


@helper
def _load_upsampled_row(row, array, base, step, scale):
    """row[w*s + b] = array[base + w*step] for b < s: an input row repeated the way
    the outputs read it, in the accumulation dtype."""
    start, stride, repeat = U(base), U(step), U(scale)
    count = U(row.size // scale)
    if scale == 1 and step == 1:  # the common layouts get loops LLVM vectorises
        for w in range(count):
            row[w] = widen(array[start + w])
    elif scale == 2 and step == 1:
        for w in range(count):
            value = widen(array[start + w])
            row[w * U(2)] = value
            row[w * U(2) + U(1)] = value
    else:
        for w in range(count):
            value = widen(array[start + w * stride])
            for b in range(repeat):
                row[w * repeat + b] = value


@helper
def _load_rows(rows, at, array, strides, n, channel, y0, count, width):
    """rows[at + a*width + x] = array[n, channel, y0 + a, x] for a < count."""
    step = U(strides[3])
    for a in range(count):
        source = U(n * strides[0] + channel * strides[1] + (y0 + a) * strides[2])
        target = U(at + a * width)
        if step == 1:
            for x in range(U(width)):
                rows[target + x] = widen(array[source + x])
        else:
            for x in range(U(width)):
                rows[target + x] = widen(array[source + x * step])


@helper
def _store_rows(array, strides, n, channel, y0, count, width, rows, at):
    """array[n, channel, y0 + a, x] = rows[at + a*width + x] for a < count, rounded once."""
    step = U(strides[3])
    for a in range(count):
        target = U(n * strides[0] + channel * strides[1] + (y0 + a) * strides[2])
        source = U(at + a * width)
        if step == 1:
            for x in range(U(width)):
                array[target + x] = narrow(rows[source + x], array)
        else:
            for x in range(U(width)):
                array[target + x * step] = narrow(rows[source + x], array)


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
