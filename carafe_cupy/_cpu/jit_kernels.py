"""The CPU backward kernels, compiled by Numba (LLVM) on first use and cached on
disk, and helpers the forward (``jit_forward``) shares.

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
from numba import njit

from . import jit_cache
from .jit_dtypes import accumulation_zeros, narrow, widen

jit_cache.register()  # the on-disk cache, before anything here is decorated

# Indices are unsigned (every index here is): Numba then skips its negative-index
# wraparound, which would otherwise keep LLVM from vectorising the loops.
U = np.uint64


@njit(cache=True, inline="always")
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


@njit(cache=True, inline="always")
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


@njit(cache=True, inline="always")
def _gather_taps(target, at, weights, wt, wstep, values, vt, offset, step, count, lo, hi):
    """For x' in [lo, hi) and taps q < count (1 to 3) in order, with x = x' - offset -
    q*step: target[at + x'] += weights[wt + q*wstep + x] * values[vt + x]."""
    if hi <= lo:
        return
    t0, first = U(at + lo), vt + lo - offset
    v0, v1, v2 = U(first), U(first - step), U(first - 2 * step)
    w0, w1, w2 = U(wt + lo - offset), U(wt + wstep + lo - offset - step), U(
        wt + 2 * wstep + lo - offset - 2 * step)
    if count == 1:
        for q in range(U(hi - lo)):
            target[t0 + q] += weights[w0 + q] * values[v0 + q]
    elif count == 2:
        for q in range(U(hi - lo)):
            value = target[t0 + q] + weights[w0 + q] * values[v0 + q]
            target[t0 + q] = value + weights[w1 + q] * values[v1 + q]
    else:
        for q in range(U(hi - lo)):
            value = target[t0 + q] + weights[w0 + q] * values[v0 + q]
            value = value + weights[w1 + q] * values[v1 + q]
            target[t0 + q] = value + weights[w2 + q] * values[v2 + q]


@njit(cache=True, inline="always")
def _spread_tap_row(target, at, weights, wt, wstep, values, vt, table, inner_lo, inner_hi,
                    stride, up_width):
    """The taps of one tap row, as a gather per target column: target[at + x*t +
    offset_j] += weights[wt + j*wstep + x] * values[vt + x], j in order for each target.
    With stride 1, target columns that every tap reaches take their taps two or
    three to a pass; the rest go one tap at a time."""
    k = table.shape[0]
    lo, hi = 0, up_width  # the targets every tap reaches from inside its columns
    for j in range(k):
        lo, hi = max(lo, table[j, 0] + table[j, 2]), min(hi, table[j, 1] + table[j, 2])
    if inner_lo >= inner_hi or lo >= hi:
        lo = hi = up_width
    j = 0
    while j < k:
        count = 2 if k - j == 4 else min(3, k - j)
        step = table[j + 1, 2] - table[j, 2] if count > 1 else 0
        _gather_taps(target, at, weights, wt + j * wstep, wstep, values, vt, table[j, 2], step,
                     count, lo, hi)
        j += count
    for j in range(k):  # the columns whose targets lie outside [lo, hi)
        first, last, offset = table[j, 0], table[j, 1], table[j, 2]
        _spread(target, at, weights, wt + j * wstep, values, vt, first,
                min(last, lo - offset), stride, offset)
        _spread(target, at, weights, wt + j * wstep, values, vt, max(first, hi - offset),
                last, stride, offset)


@njit(cache=True, inline="always")
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


@njit(cache=True, inline="always")
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


@njit(cache=True, inline="always")
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


@njit(cache=True, inline="always")
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


@njit(cache=True, inline="always")
def _geometry(dims):
    """radius, taps, center rows, output width, upsampled input width, channels per group."""
    width, k, groups, scale, stride = dims[3], dims[4], dims[5], dims[6], dims[7]
    rows = (dims[2] + stride - 1) // stride
    out_width = (width + stride - 1) // stride * scale
    return (k - 1) // 2, k * k, rows, out_width, width * scale, dims[1] // groups


@njit(cache=True, inline="always")
def _tap_columns(j, radius, dims, out_width):
    """Output columns [lo, hi) whose tap column j lands inside the input, and where
    column x reads in the upsampled input row: x*t + offset."""
    width, scale, stride, dilation = dims[3], dims[6], dims[7], dims[8]
    shift = (j - radius) * dilation  # in input columns
    lo = max(0, -(shift // stride)) * scale
    hi = min(out_width // scale, (width - 1 - shift) // stride + 1) * scale
    return lo, hi, shift * scale


@njit(cache=True, nogil=True)
def grad_masks(grad_output, features, grad_masks, gs, fs, ms, dims, n, g, top, bottom):
    """Mask gradients of batch n, group g, center rows [top, bottom)."""
    height, k, scale, stride, dilation = dims[2], dims[4], dims[6], dims[7], dims[8]
    radius, taps, _, out_width, up_width, per_group = _geometry(dims)
    block = scale * out_width
    totals = accumulation_zeros(taps * block, features)
    upstream = accumulation_zeros(block, features)
    row = accumulation_zeros(up_width, features)
    for hc in range(top, bottom):
        totals[:] = 0  # taps outside the input keep an exact zero
        for channel in range(g * per_group, (g + 1) * per_group):  # summed in channel order
            _load_rows(upstream, 0, grad_output, gs, n, channel, hc * scale, scale, out_width)
            for i in range(k):
                source_row = hc * stride + (i - radius) * dilation
                if source_row < 0 or source_row >= height:
                    continue
                base = n * fs[0] + channel * fs[1] + source_row * fs[2]
                _load_upsampled_row(row, features, base, fs[3], scale)
                for j in range(k):
                    lo, hi, offset = _tap_columns(j, radius, dims, out_width)
                    for a in range(scale):
                        _accumulate(totals, (i * k + j) * block + a * out_width, upstream,
                                    a * out_width, row, lo, hi, stride, offset)
        for tap in range(taps):
            _store_rows(grad_masks, ms, n, g * taps + tap, hc * scale, scale, out_width,
                        totals, tap * block)


@njit(cache=True, nogil=True)
def grad_features(grad_output, masks, grad_features, gs, ms, fs, dims, n, g, top, bottom):
    """Feature gradients of batch n, group g, input rows [top, bottom): a gather,
    each input row summing the outputs that read it, tap by tap, into an upsampled
    row whose s copies of each column are added last."""
    k, scale, stride, dilation = dims[4], dims[6], dims[7], dims[8]
    radius, taps, rows, out_width, up_width, per_group = _geometry(dims)
    block = scale * out_width
    weights = accumulation_zeros(taps * block, masks)
    upstream = accumulation_zeros(block, masks)
    totals = accumulation_zeros(per_group * up_width, masks)
    table, inner_lo, inner_hi = _tap_table(k, radius, dims, out_width)
    for h in range(top, bottom):
        totals[:] = 0
        for i in range(k):
            # the center row whose tap row i reads input row h, if any
            reach = h - (i - radius) * dilation
            if reach < 0 or reach % stride != 0 or reach // stride >= rows:
                continue
            hc = reach // stride
            for tap in range(taps):
                _load_rows(weights, tap * block, masks, ms, n, g * taps + tap, hc * scale,
                           scale, out_width)
            for c in range(per_group):
                _load_rows(upstream, 0, grad_output, gs, n, g * per_group + c, hc * scale,
                           scale, out_width)
                for a in range(scale):
                    _spread_tap_row(totals, c * up_width, weights,
                                    i * k * block + a * out_width, block, upstream,
                                    a * out_width, table, inner_lo, inner_hi, stride, up_width)
        for c in range(per_group):
            base = U(n * fs[0] + (g * per_group + c) * fs[1] + h * fs[2])
            step, first, repeat = U(fs[3]), U(c * up_width), U(scale)
            for w in range(U(up_width // scale)):
                value = totals[first + w * repeat]
                for b in range(U(1), repeat):
                    value += totals[first + w * repeat + b]
                grad_features[base + w * step] = narrow(value, grad_features)
