"""The backward CPU kernels, compiled by Numba: mask and feature gradients.

Same conventions as ``jit_kernels`` (flat arrays with element strides, ``dims``,
one work item per call, a fixed order of summation, the GIL released). What
makes them fast is that the inner loops, which run over output columns with unit
stride and are vectorised by LLVM, work on ``CHANNELS`` channels at once: a
value shared by those channels (a mask for the feature gradients, a grad_output
for the mask gradients) is loaded once for all of them, and every running total
is loaded and stored once for several products instead of once for each. Each
total still adds its products one at a time, in the order of the single-channel
loops, so the results are those of one channel at a time, bit for bit.
"""

from __future__ import annotations

from numba import njit

from . import jit_cache
from .jit_dtypes import accumulation_zeros, narrow
from .jit_kernels import (
    U,
    _accumulate,
    _geometry,
    _load_rows,
    _load_upsampled_row,
    _spread_tap_row,
    _store_rows,
    _tap_table,
)

jit_cache.register()  # the on-disk cache, before anything here is decorated

CHANNELS = 4  # channels per pass of the inner loops; the rest go one at a time
SUB_BAND = 8  # rows per pass over the channels: bounds the scratch of a work item


@njit(cache=True, inline="always")
def _products_4(totals, at, rows_apart, upstream, ut, block, source, st, channel_step, lo,
                hi, pair):
    """For x in [lo, hi) and channels c < 4 in order: totals[at + x] +=
    upstream[ut + c*block + x] * source[st + c*channel_step + x], and, if ``pair``,
    the same for the next output row (``rows_apart`` further in totals and
    upstream) with the same source values."""
    if hi <= lo:
        return
    t0, u0, s0 = U(at + lo), U(ut + lo), U(st + lo)
    u1, u2, u3 = u0 + U(block), u0 + U(2 * block), u0 + U(3 * block)
    s1, s2, s3 = s0 + U(channel_step), s0 + U(2 * channel_step), s0 + U(3 * channel_step)
    if pair:
        t1, apart = t0 + U(rows_apart), U(rows_apart)
        for q in range(U(hi - lo)):
            f0, f1, f2, f3 = source[s0 + q], source[s1 + q], source[s2 + q], source[s3 + q]
            value = totals[t0 + q] + upstream[u0 + q] * f0
            value = value + upstream[u1 + q] * f1
            value = value + upstream[u2 + q] * f2
            totals[t0 + q] = value + upstream[u3 + q] * f3
            value = totals[t1 + q] + upstream[u0 + apart + q] * f0
            value = value + upstream[u1 + apart + q] * f1
            value = value + upstream[u2 + apart + q] * f2
            totals[t1 + q] = value + upstream[u3 + apart + q] * f3
    else:
        for q in range(U(hi - lo)):
            value = totals[t0 + q] + upstream[u0 + q] * source[s0 + q]
            value = value + upstream[u1 + q] * source[s1 + q]
            value = value + upstream[u2 + q] * source[s2 + q]
            totals[t0 + q] = value + upstream[u3 + q] * source[s3 + q]


@njit(cache=True, nogil=True)
def grad_masks(grad_output, features, grad_masks, gs, fs, ms, dims, n, g, top, bottom):
    """Mask gradients of batch n, group g, center rows [top, bottom): each a sum
    over the group's channels in channel order. Up to SUB_BAND center rows at a
    time, channels outermost, so that each input row is widened once per channel."""
    for start in range(top, bottom, SUB_BAND):
        _grad_masks_rows(grad_output, features, grad_masks, gs, fs, ms, dims, n, g, start,
                         min(bottom, start + SUB_BAND))


@njit(cache=True, inline="always")
def _grad_masks_rows(grad_output, features, grad_masks, gs, fs, ms, dims, n, g, top, bottom):
    height, k, scale, stride, dilation = dims[2], dims[4], dims[6], dims[7], dims[8]
    radius, taps, _, out_width, up_width, per_group = _geometry(dims)
    block, band = scale * out_width, bottom - top
    row_lo = max(0, top * stride - radius * dilation)  # the input rows the band reads
    row_count = max(0, min(height, (bottom - 1) * stride + radius * dilation + 1) - row_lo)
    totals = accumulation_zeros(band * taps * block, features)  # taps outside stay zero
    upstream = accumulation_zeros(CHANNELS * band * block, features)
    rows = accumulation_zeros(CHANNELS * row_count * up_width, features)
    table, _, _ = _tap_table(k, radius, dims, out_width)
    first = g * per_group
    for c0 in range(first, first + per_group, CHANNELS):
        count = min(CHANNELS, first + per_group - c0)
        for c in range(count):  # this pass's grad_output rows and widened input rows
            _load_rows(upstream, c * band * block, grad_output, gs, n, c0 + c, top * scale,
                       band * scale, out_width)
            for row in range(row_count):
                base = n * fs[0] + (c0 + c) * fs[1] + (row_lo + row) * fs[2]
                at = (c * row_count + row) * up_width
                _load_upsampled_row(rows[at:at + up_width], features, base, fs[3], scale)
        for hc in range(top, bottom):
            for i in range(k):
                source_row = hc * stride + (i - radius) * dilation
                if source_row < 0 or source_row >= height:
                    continue
                for j in range(k):
                    lo, hi, offset = table[j, 0], table[j, 1], table[j, 2]
                    at = ((hc - top) * taps + i * k + j) * block
                    ut = (hc - top) * block
                    st = (source_row - row_lo) * up_width + offset
                    if count == CHANNELS and stride == 1:
                        for a in range(0, scale, 2):
                            _products_4(totals, at + a * out_width, out_width, upstream,
                                        ut + a * out_width, band * block, rows, st,
                                        row_count * up_width, lo, hi, a + 1 < scale)
                        continue
                    for a in range(scale):
                        for c in range(count):
                            _accumulate(totals, at + a * out_width, upstream,
                                        c * band * block + ut + a * out_width, rows, lo, hi,
                                        stride, c * row_count * up_width + st)
    for hc in range(top, bottom):
        for tap in range(taps):
            _store_rows(grad_masks, ms, n, g * taps + tap, hc * scale, scale, out_width,
                        totals, ((hc - top) * taps + tap) * block)


@njit(cache=True, inline="always")
def _gather_taps_4(target, at, target_step, weights, wt, wstep, values, vt, value_step,
                   offset, step, count, lo, hi):
    """For x' in [lo, hi), channels c < 4 and taps q < count (1 to 3) in order, with
    x = x' - offset - q*step: target[at + c*target_step + x'] +=
    weights[wt + q*wstep + x] * values[vt + c*value_step + x]. Each weight is
    loaded once for the four channels."""
    if hi <= lo:
        return
    t0, first = U(at + lo), vt + lo - offset
    t1, t2, t3 = t0 + U(target_step), t0 + U(2 * target_step), t0 + U(3 * target_step)
    v0, cs = U(first), U(value_step)
    w0 = U(wt + lo - offset)
    if count == 1:
        for q in range(U(hi - lo)):
            m0 = weights[w0 + q]
            target[t0 + q] += m0 * values[v0 + q]
            target[t1 + q] += m0 * values[v0 + cs + q]
            target[t2 + q] += m0 * values[v0 + U(2) * cs + q]
            target[t3 + q] += m0 * values[v0 + U(3) * cs + q]
        return
    v1, w1 = U(first - step), U(wt + wstep + lo - offset - step)
    if count == 2:
        for q in range(U(hi - lo)):
            m0, m1 = weights[w0 + q], weights[w1 + q]
            target[t0 + q] = target[t0 + q] + m0 * values[v0 + q] + m1 * values[v1 + q]
            target[t1 + q] = (target[t1 + q] + m0 * values[v0 + cs + q]
                              + m1 * values[v1 + cs + q])
            target[t2 + q] = (target[t2 + q] + m0 * values[v0 + U(2) * cs + q]
                              + m1 * values[v1 + U(2) * cs + q])
            target[t3 + q] = (target[t3 + q] + m0 * values[v0 + U(3) * cs + q]
                              + m1 * values[v1 + U(3) * cs + q])
        return
    v2, w2 = U(first - 2 * step), U(wt + 2 * wstep + lo - offset - 2 * step)
    for q in range(U(hi - lo)):
        m0, m1, m2 = weights[w0 + q], weights[w1 + q], weights[w2 + q]
        target[t0 + q] = (target[t0 + q] + m0 * values[v0 + q] + m1 * values[v1 + q]
                          + m2 * values[v2 + q])
        target[t1 + q] = (target[t1 + q] + m0 * values[v0 + cs + q]
                          + m1 * values[v1 + cs + q] + m2 * values[v2 + cs + q])
        target[t2 + q] = (target[t2 + q] + m0 * values[v0 + U(2) * cs + q]
                          + m1 * values[v1 + U(2) * cs + q] + m2 * values[v2 + U(2) * cs + q])
        target[t3 + q] = (target[t3 + q] + m0 * values[v0 + U(3) * cs + q]
                          + m1 * values[v1 + U(3) * cs + q] + m2 * values[v2 + U(3) * cs + q])


@njit(cache=True, inline="always")
def _spread_tap_row_4(target, at, target_step, weights, wt, wstep, values, vt, value_step,
                      table, up_width):
    """``_spread_tap_row`` (stride 1) for four channels at once, in the same order for
    each: the targets every tap reaches take their taps two or three to a pass,
    the rest one tap at a time."""
    k = table.shape[0]
    lo, hi = 0, up_width
    for j in range(k):
        lo, hi = max(lo, table[j, 0] + table[j, 2]), min(hi, table[j, 1] + table[j, 2])
    if lo >= hi:
        lo = hi = up_width
    j = 0
    while j < k:
        count = 2 if k - j == 4 else min(3, k - j)
        step = table[j + 1, 2] - table[j, 2] if count > 1 else 0
        _gather_taps_4(target, at, target_step, weights, wt + j * wstep, wstep, values, vt,
                       value_step, table[j, 2], step, count, lo, hi)
        j += count
    for j in range(k):  # the targets outside [lo, hi), one tap at a time
        first, last, offset = table[j, 0], table[j, 1], table[j, 2]
        for start, end in ((first + offset, min(last + offset, lo)),
                           (max(first + offset, hi), last + offset)):
            _gather_taps_4(target, at, target_step, weights, wt + j * wstep, wstep, values,
                           vt, value_step, offset, 0, 1, start, end)


@njit(cache=True, nogil=True)
def grad_features(grad_output, masks, grad_features, gs, ms, fs, dims, n, g, top, bottom):
    """Feature gradients of batch n, group g, input rows [top, bottom): a gather,
    each input row summing the outputs that read it, tap by tap, into an upsampled
    row whose s copies of each column are added last. Up to SUB_BAND input rows
    at a time, channels outermost, so that the masks and grad_output rows they
    read are widened once."""
    for start in range(top, bottom, SUB_BAND):
        _grad_features_rows(grad_output, masks, grad_features, gs, ms, fs, dims, n, g, start,
                            min(bottom, start + SUB_BAND))


@njit(cache=True, inline="always")
def _grad_features_rows(grad_output, masks, grad_features, gs, ms, fs, dims, n, g, top,
                        bottom):
    k, scale, stride, dilation = dims[4], dims[6], dims[7], dims[8]
    radius, taps, rows, out_width, up_width, per_group = _geometry(dims)
    block = scale * out_width
    # the center rows whose taps reach input rows [top, bottom)
    center_lo = max(0, -((radius * dilation - top) // stride))
    centers = max(0, min(rows, (bottom - 1 + radius * dilation) // stride + 1) - center_lo)
    weights = accumulation_zeros(centers * taps * block, masks)
    upstream = accumulation_zeros(CHANNELS * centers * block, masks)
    totals = accumulation_zeros(CHANNELS * up_width, masks)
    table, inner_lo, inner_hi = _tap_table(k, radius, dims, out_width)
    first = g * per_group
    for center in range(centers):
        for tap in range(taps):
            _load_rows(weights, (center * taps + tap) * block, masks, ms, n, g * taps + tap,
                       (center_lo + center) * scale, scale, out_width)
    for c0 in range(0, per_group, CHANNELS):
        count = min(CHANNELS, per_group - c0)
        for c in range(count):
            _load_rows(upstream, c * centers * block, grad_output, gs, n, first + c0 + c,
                       center_lo * scale, centers * scale, out_width)
        for h in range(top, bottom):
            totals[:] = 0
            for i in range(k):
                # the center row whose tap row i reads input row h, if any
                reach = h - (i - radius) * dilation
                if reach < 0 or reach % stride != 0 or reach // stride >= rows:
                    continue
                center = reach // stride - center_lo
                for a in range(scale):
                    wt = (center * taps + i * k) * block + a * out_width
                    ut = center * block + a * out_width
                    if count == CHANNELS and stride == 1:
                        _spread_tap_row_4(totals, 0, up_width, weights, wt, block, upstream,
                                          ut, centers * block, table, up_width)
                        continue
                    for c in range(count):
                        _spread_tap_row(totals, c * up_width, weights, wt, block, upstream,
                                        c * centers * block + ut, table, inner_lo, inner_hi,
                                        stride, up_width)
            for c in range(count):  # the s copies of each column, added in order
                base = U(n * fs[0] + (first + c0 + c) * fs[1] + h * fs[2])
                step, start, repeat = U(fs[3]), U(c * up_width), U(scale)
                for w in range(U(up_width // scale)):
                    value = totals[start + w * repeat]
                    for b in range(U(1), repeat):
                        value += totals[start + w * repeat + b]
                    grad_features[base + w * step] = narrow(value, grad_features)
