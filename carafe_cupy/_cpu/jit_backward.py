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

from .jit_compile import kernel, numba_inlined_helper, outlined_helper
from .jit_dtypes import accumulation_zeros, narrow
from .jit_kernels import (
    U,
    _accumulate,
    _geometry,
    _load_rows,
    _load_upsampled_row,
    _spread,
    _store_rows,
    _tap_table,
)

CHANNELS = 4  # channels per pass of the inner loops (stride 1)
SUB_BAND = 8  # rows per pass over the channels: bounds the scratch of a work item


@numba_inlined_helper
def _products_4(totals, at, second, upstream, ut, upstream_second, block, source, st,
                channel_step, lo, hi):
    """For x in [lo, hi) and channels c < 4 in order: totals[at + x] +=
    upstream[ut + c*block + x] * source[st + c*channel_step + x], and the same for
    a second output row (``second`` in totals, ``upstream_second`` in upstream)
    with the same source values. One loop for both rows, so that a source value
    serves eight products."""
    if hi <= lo:
        return
    t0, t1, u0, v0, s0 = U(at + lo), U(second + lo), U(ut + lo), U(upstream_second + lo), U(
        st + lo)
    u1, u2, u3 = u0 + U(block), u0 + U(2 * block), u0 + U(3 * block)
    v1, v2, v3 = v0 + U(block), v0 + U(2 * block), v0 + U(3 * block)
    s1, s2, s3 = s0 + U(channel_step), s0 + U(2 * channel_step), s0 + U(3 * channel_step)
    for q in range(U(hi - lo)):
        f0, f1, f2, f3 = source[s0 + q], source[s1 + q], source[s2 + q], source[s3 + q]
        totals[t0 + q] = (totals[t0 + q] + upstream[u0 + q] * f0 + upstream[u1 + q] * f1
                          + upstream[u2 + q] * f2 + upstream[u3 + q] * f3)
        totals[t1 + q] = (totals[t1 + q] + upstream[v0 + q] * f0 + upstream[v1 + q] * f1
                          + upstream[v2 + q] * f2 + upstream[v3 + q] * f3)


@outlined_helper
def _products_strided(totals, at, upstream, ut, upstream_step, rows, st, row_step, lo, hi,
                      stride, count, scale, out_width):
    """``_products_4``'s sums for any stride, one channel and row at a time (a
    function of its own: compiled once, and kept out of the stride-1 loops)."""
    for a in range(scale):
        for c in range(count):
            _accumulate(totals, at + a * out_width, upstream,
                        c * upstream_step + ut + a * out_width, rows, lo, hi, stride,
                        c * row_step + st)


@outlined_helper
def _spread_strided(totals, up_width, weights, wt, wstep, upstream, ut, value_step, table,
                    stride, count):
    """``_spread_tap_row_4``'s sums for any stride, one channel and tap at a time,
    so each target still adds its taps in order (a function of its own, like
    ``_products_strided``)."""
    for c in range(count):
        for j in range(table.shape[0]):
            _spread(totals, c * up_width, weights, wt + j * wstep, upstream,
                    c * value_step + ut, table[j, 0], table[j, 1], stride, table[j, 2])


@kernel
def grad_masks(grad_output, features, grad_masks, gs, fs, ms, dims, n, g, top, bottom):
    """Mask gradients of batch n, group g, center rows [top, bottom): each a sum
    over the group's channels in channel order. Up to SUB_BAND center rows at a
    time, channels outermost, so that each input row is widened once per channel."""
    height, k, scale, stride, dilation = dims[2], dims[4], dims[6], dims[7], dims[8]
    radius, taps, _, out_width, up_width, per_group = _geometry(dims)
    block, first = scale * out_width, g * per_group
    table, _, _ = _tap_table(k, radius, dims, out_width)
    for start in range(top, bottom, SUB_BAND):
        end = min(bottom, start + SUB_BAND)
        band = end - start
        row_lo = max(0, start * stride - radius * dilation)  # the input rows the band reads
        row_count = max(0, min(height, (end - 1) * stride + radius * dilation + 1) - row_lo)
        # taps outside stay zero; one more row takes the products of an odd scale's last
        # row's partner, and is never stored
        spare = band * taps * block
        totals = accumulation_zeros(spare + out_width, features)
        upstream = accumulation_zeros(CHANNELS * band * block, features)
        rows = accumulation_zeros(CHANNELS * row_count * up_width, features)
        upstream_step, row_step = band * block, row_count * up_width  # between channels
        for c0 in range(first, first + per_group, CHANNELS):
            count = min(CHANNELS, first + per_group - c0)
            if count < CHANNELS:  # the channels past the group: exact zeros, adding +0
                upstream[count * upstream_step:].fill(0)
                rows[count * row_step:].fill(0)
            for c in range(count):  # this pass's grad_output rows and widened input rows
                _load_rows(upstream, c * upstream_step, grad_output, gs, n, c0 + c,
                           start * scale, band * scale, out_width)
                for row in range(row_count):
                    base = n * fs[0] + (c0 + c) * fs[1] + (row_lo + row) * fs[2]
                    at = c * row_step + row * up_width
                    _load_upsampled_row(rows[at:at + up_width], features, base, fs[3], scale)
            for hc in range(start, end):
                for i in range(k):
                    source_row = hc * stride + (i - radius) * dilation
                    if source_row < 0 or source_row >= height:
                        continue
                    for j in range(k):
                        lo, hi, offset = table[j, 0], table[j, 1], table[j, 2]
                        at = ((hc - start) * taps + i * k + j) * block
                        ut = (hc - start) * block
                        st = (source_row - row_lo) * up_width + offset
                        if stride == 1:
                            for a in range(0, scale, 2):
                                paired = a + 1 < scale
                                _products_4(totals, at + a * out_width,
                                            at + (a + 1) * out_width if paired else spare,
                                            upstream, ut + a * out_width,
                                            ut + (a + 1) * out_width if paired else ut,
                                            upstream_step, rows, st, row_step, lo, hi)
                            continue
                        _products_strided(totals, at, upstream, ut, upstream_step, rows, st,
                                          row_step, lo, hi, stride, count, scale, out_width)
        for hc in range(start, end):
            for tap in range(taps):
                _store_rows(grad_masks, ms, n, g * taps + tap, hc * scale, scale, out_width,
                            totals, ((hc - start) * taps + tap) * block)


@numba_inlined_helper
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


@numba_inlined_helper
def _spread_tap_row_4(target, at, target_step, weights, wt, wstep, values, vt, value_step,
                      table, up_width):
    """The taps of one tap row (stride 1), as a gather per target column, for four
    channels at once: target[at + c*target_step + x + offset_j] +=
    weights[wt + j*wstep + x] * values[vt + c*value_step + x], j in order for each
    target. The targets every tap reaches take their taps two or three to a pass,
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


@kernel
def grad_features(grad_output, masks, grad_features, gs, ms, fs, dims, n, g, top, bottom):
    """Feature gradients of batch n, group g, input rows [top, bottom): a gather,
    each input row summing the outputs that read it, tap by tap, into an upsampled
    row whose s copies of each column are added last. Up to SUB_BAND input rows
    at a time, channels outermost, so that the masks and grad_output rows they
    read are widened once."""
    k, scale, stride, dilation = dims[4], dims[6], dims[7], dims[8]
    radius, taps, rows, out_width, up_width, per_group = _geometry(dims)
    block, first = scale * out_width, g * per_group
    table, _, _ = _tap_table(k, radius, dims, out_width)
    totals = accumulation_zeros(CHANNELS * up_width, masks)
    for start in range(top, bottom, SUB_BAND):
        end = min(bottom, start + SUB_BAND)
        # the center rows whose taps reach input rows [start, end)
        center_lo = max(0, -((radius * dilation - start) // stride))
        centers = max(0, min(rows, (end - 1 + radius * dilation) // stride + 1) - center_lo)
        weights = accumulation_zeros(centers * taps * block, masks)
        upstream = accumulation_zeros(CHANNELS * centers * block, masks)
        for center in range(centers):
            for tap in range(taps):
                _load_rows(weights, (center * taps + tap) * block, masks, ms, n,
                           g * taps + tap, (center_lo + center) * scale, scale, out_width)
        for c0 in range(0, per_group, CHANNELS):
            count = min(CHANNELS, per_group - c0)
            for c in range(count):
                _load_rows(upstream, c * centers * block, grad_output, gs, n, first + c0 + c,
                           center_lo * scale, centers * scale, out_width)
            for h in range(start, end):
                totals.fill(0)
                for i in range(k):
                    # the center row whose tap row i reads input row h, if any
                    reach = h - (i - radius) * dilation
                    if reach < 0 or reach % stride != 0 or reach // stride >= rows:
                        continue
                    center = reach // stride - center_lo
                    for a in range(scale):
                        wt = (center * taps + i * k) * block + a * out_width
                        ut = center * block + a * out_width
                        if stride == 1:  # channels past the group fill rows never stored
                            _spread_tap_row_4(totals, 0, up_width, weights, wt, block,
                                              upstream, ut, centers * block, table, up_width)
                            continue
                        _spread_strided(totals, up_width, weights, wt, block, upstream, ut,
                                        centers * block, table, stride, count)
                for c in range(count):  # the s copies of each column, added in order
                    base = U(n * fs[0] + (first + c0 + c) * fs[1] + h * fs[2])
                    step, row_at, repeat = U(fs[3]), U(c * up_width), U(scale)
                    for w in range(U(up_width // scale)):
                        value = totals[row_at + w * repeat]
                        for b in range(U(1), repeat):
                            value += totals[row_at + w * repeat + b]
                        grad_features[base + w * step] = narrow(value, grad_features)
