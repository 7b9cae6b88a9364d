"""The backward CPU kernel, compiled by Numba: both gradients from one read of
grad_output.

Same conventions as the forward (``jit_forward``; flat arrays with element
strides, ``dims``, one work item per call, the GIL released), and the same way
of being fast: the running sums of a block of COLUMNS output columns stay in
vector registers while the products are added, so each value loaded from
scratch serves several sums. A work item is a band of input rows; for each
block of CHANNELS channels it reads the grad_output rows its rows need once,
into scratch, and computes from them:

* the feature gradients of its rows, the forward turned around. Input column
  m*t + p gathers, in an upsampled row of phase p, the outputs that read it:
  tap j of output column X lands on lane X + q_j*s of phase p_j, where
  shift_j = q_j*t + p_j. So tap j is one shift of the mask and grad_output
  rows, and the forward's register block (``_block_sums``: CHANNELS channels,
  one mask load for all of them) sums the taps in order; the s lanes of an
  input column are added last, in order;
* the mask gradients of the center rows it owns (center row c is owned by the
  item holding input row c*t; its grad_output rows are among those read): a
  block holds MASK_TAPS taps of two output rows of one center row, which read
  the same input values, with the channels the innermost loop, so one
  grad_output load serves MASK_TAPS products and one input load two. Input
  rows are arranged as for the forward; the sums carry over from one channel
  block to the next in scratch.

Every sum adds its products in the order of the single-channel loops of the
naive reference (mask gradients: channels in order; feature gradients: tap rows
i, then sub-rows a, then tap columns j, then the s lanes), with no fused
multiply-add: results are the same bitwise for any thread count, block or
layout (and the same as the earlier one-kernel-per-gradient code). Products the
blocks add beyond the real ones are exact zeros (a zero mask and a zero
grad_output from scratch padding), and a sum starting at +0 is unchanged by
them; mask-gradient lanes whose tap reads outside the input are stored as
zeros, never summed, so a non-finite grad_output there does not leak in.
Scratch is bounded by the input and GATHER_BUDGET, not by the dilation.
"""

from __future__ import annotations

import numpy as np

from .jit_compile import kernel, numba_inlined_helper
from .jit_dtypes import accumulation_zeros, narrow, widen
from .jit_forward import (
    BLOCK,
    CHANNELS,
    COLUMNS,
    TAPS,
    _arrange_row,
    _block_sums,
    _load_masks,
    _stack_array,
)
from .jit_kernels import U, _geometry, _tap_columns

MASK_TAPS = 8  # mask gradients: taps of two output rows summed in registers together
MASK_BLOCK = 2 * MASK_TAPS * COLUMNS  # their sums, in registers
GATHER_BUDGET = 1 << 17  # mask elements in scratch per chunk of rows (or one center row's)


@numba_inlined_helper
def _column_layout(dims, radius, out_width, padded_width):
    """The forward's arranged input rows: per tap column j the output columns
    [inside_from[j], inside_to[j]) where it reads inside the input and its
    offset in an arranged row, the zeros before each row and a phase's pitch."""
    k, scale, stride, dilation = dims[4], dims[6], dims[7], dims[8]
    inside_from, inside_to = np.empty(k, np.int64), np.empty(k, np.int64)
    offsets = np.empty(k, np.int64)
    side = 0  # the farthest a tap column reads beside the row while inside it somewhere
    for j in range(k):
        inside_from[j], inside_to[j], _ = _tap_columns(j, radius, dims, out_width)
        if inside_from[j] < inside_to[j]:
            side = max(side, abs(j - radius) * dilation)
    left = (side + stride - 1) // stride * scale
    pitch = left + padded_width + side // stride * scale
    for j in range(k):
        shift = (j - radius) * dilation
        offsets[j] = shift % stride * pitch + left + shift // stride * scale
    return inside_from, inside_to, offsets, left, pitch


@numba_inlined_helper
def _load_padded_rows(rows, at, pitch, array, strides, n, channel, y0, count, width):
    """rows[at + a*pitch + x] = array[n, channel, y0 + a, x] for a < count, x < width."""
    step = U(strides[3])
    for a in range(count):
        source = U(n * strides[0] + channel * strides[1] + (y0 + a) * strides[2])
        target = U(at + a * pitch)
        if step == 1:
            for x in range(U(width)):
                rows[target + x] = widen(array[source + x])
        else:
            for x in range(U(width)):
                rows[target + x] = widen(array[source + x * step])


@numba_inlined_helper
def _mask_sums(acc, totals, block_at, row_offsets, slot, upstream, go_at, go_second, go_pitch,
               rows, at_row, channel_pitch, count):
    """One register block of mask gradients: for the MASK_TAPS taps t listed from
    row_offsets[slot], q < COLUMNS and channels c < count in order,
    totals[block_at + t*COLUMNS + q] += upstream[go_at + c*go_pitch + q] *
    rows[row_offsets[slot + t] + at_row + c*channel_pitch + q], and the same for a
    second output row (totals from block_at + MASK_TAPS*COLUMNS, upstream from
    go_at + go_second) with the same input values.

    The block's totals are contiguous and copied in and out by flat loops, and the
    taps and columns are written out one by one (8 and 16): with constant offsets
    into ``acc`` only, LLVM keeps the sums in vector registers across the loop over
    channels (copies at scattered offsets, or a second loop over channels, make it
    keep them in memory)."""
    s, at = U(slot), U(at_row)
    r0, r1, r2, r3 = (U(row_offsets[s]) + at, U(row_offsets[s + U(1)]) + at,
                      U(row_offsets[s + U(2)]) + at, U(row_offsets[s + U(3)]) + at)
    r4, r5, r6, r7 = (U(row_offsets[s + U(4)]) + at, U(row_offsets[s + U(5)]) + at,
                      U(row_offsets[s + U(6)]) + at, U(row_offsets[s + U(7)]) + at)
    base = U(block_at)
    for q in range(U(MASK_BLOCK)):
        acc[q] = totals[base + q]
    g0, g1, jump, fc = U(go_at), U(go_at + go_second), U(go_pitch), U(channel_pitch)
    for c in range(U(count)):
        gc, rc = c * jump, c * fc
        for q in range(U(COLUMNS)):
            u, v = upstream[g0 + gc + q], upstream[g1 + gc + q]
            f0, f1, f2, f3 = rows[r0 + rc + q], rows[r1 + rc + q], rows[r2 + rc + q], rows[
                r3 + rc + q]
            f4, f5, f6, f7 = rows[r4 + rc + q], rows[r5 + rc + q], rows[r6 + rc + q], rows[
                r7 + rc + q]
            acc[q] = acc[q] + u * f0
            acc[16 + q] = acc[16 + q] + u * f1
            acc[32 + q] = acc[32 + q] + u * f2
            acc[48 + q] = acc[48 + q] + u * f3
            acc[64 + q] = acc[64 + q] + u * f4
            acc[80 + q] = acc[80 + q] + u * f5
            acc[96 + q] = acc[96 + q] + u * f6
            acc[112 + q] = acc[112 + q] + u * f7
            acc[128 + q] = acc[128 + q] + v * f0
            acc[144 + q] = acc[144 + q] + v * f1
            acc[160 + q] = acc[160 + q] + v * f2
            acc[176 + q] = acc[176 + q] + v * f3
            acc[192 + q] = acc[192 + q] + v * f4
            acc[208 + q] = acc[208 + q] + v * f5
            acc[224 + q] = acc[224 + q] + v * f6
            acc[240 + q] = acc[240 + q] + v * f7
    for q in range(U(MASK_BLOCK)):
        totals[base + q] = acc[q]


@numba_inlined_helper
def _gather_lists(mask_offsets, go_offsets, padded, start, end, center_lo, rows, dims,
                  inside_from, inside_to, before, pitch, slots, zero_masks, zero_go):
    """Per input row h in [start, end) and stride phase p, the (tap, sub-row) terms
    that reach it, in the order they are added (tap rows i, sub-rows a, tap columns
    j): where each reads in the mask and grad_output scratch, shifted so that lane x
    of the phase reads column x - q_j*s. Padded to whole groups of TAPS with terms
    reading zeros (at zero_masks and zero_go)."""
    k, scale, stride, dilation = dims[4], dims[6], dims[7], dims[8]
    radius, taps = (k - 1) // 2, k * k
    for h in range(start, end):
        for p in range(stride):
            line = (h - start) * stride + p
            table, used = line * slots, 0
            for i in range(k):
                reach_row = h - (i - radius) * dilation
                if reach_row < 0 or reach_row % stride != 0 or reach_row // stride >= rows:
                    continue
                center = reach_row // stride - center_lo
                for a in range(scale):
                    for j in range(k):
                        shift = (j - radius) * dilation
                        if inside_from[j] >= inside_to[j] or shift % stride != p:
                            continue
                        lanes = before - shift // stride * scale
                        mask_offsets[table + used] = (
                            ((center * taps + i * k + j) * scale + a) * pitch + lanes)
                        go_offsets[table + used] = (center * scale + a) * pitch + lanes
                        used += 1
            padded[line] = (used + TAPS - 1) // TAPS * TAPS
            for slot in range(used, padded[line]):
                mask_offsets[table + slot], go_offsets[table + slot] = zero_masks, zero_go


@numba_inlined_helper
def _mask_lists(row_offsets, tap_slot, padded, own_lo, owned, first_row, dims, inside_from,
                inside_to, column_offsets, row_pitch, zero_row, slots):
    """Per owned center row: the taps whose row is inside the input and whose column
    is inside somewhere, in order, where each reads in the arranged input rows, and
    each tap's place in that list (-1: never summed), padded to whole MASK_TAPS groups
    with taps reading the zero row."""
    height, k, stride, dilation = dims[2], dims[4], dims[7], dims[8]
    radius, taps = (k - 1) // 2, k * k
    for local in range(owned):
        used = 0
        for i in range(k):
            source_row = (own_lo + local) * stride + (i - radius) * dilation
            for j in range(k):
                tap_slot[local * taps + i * k + j] = -1
                if 0 <= source_row < height and inside_from[j] < inside_to[j]:
                    tap_slot[local * taps + i * k + j] = used
                    row_offsets[local * slots + used] = (
                        (source_row - first_row) * row_pitch + column_offsets[j])
                    used += 1
        padded[local] = (used + MASK_TAPS - 1) // MASK_TAPS * MASK_TAPS
        for slot in range(used, slots):
            row_offsets[local * slots + slot] = zero_row


@numba_inlined_helper
def _store_mask_gradients(grad_masks, gms, n, g, own_lo, owned, dims, totals, tap_slot,
                          inside_from, inside_to, out_width, column_blocks, groups):
    """The owned center rows' mask gradients from ``totals`` (register block by
    register block), rounded once; lanes whose tap reads outside the input, and taps
    never summed, as zeros."""
    k, scale = dims[4], dims[6]
    taps, pairs = k * k, (scale + 1) // 2
    for local in range(owned):
        for tap in range(taps):
            slot, j = tap_slot[local * taps + tap], tap % k
            lo, hi = (inside_from[j], inside_to[j]) if slot >= 0 else (0, 0)
            group, t = max(slot, 0) // MASK_TAPS, max(slot, 0) % MASK_TAPS
            for a in range(scale):
                y = (own_lo + local) * scale + a
                target = U(n * gms[0] + (g * taps + tap) * gms[1] + y * gms[2])
                at = U(((local * pairs + a // 2) * column_blocks * groups + group) * MASK_BLOCK
                       + (a % 2 * MASK_TAPS + t) * COLUMNS)
                step = U(gms[3])
                for column in range(column_blocks):  # a block's lanes are contiguous
                    x0 = U(column * COLUMNS)
                    source, lanes = at + U(column * groups * MASK_BLOCK), U(min(
                        COLUMNS, out_width - column * COLUMNS))
                    for q in range(lanes):
                        inside = U(lo) <= x0 + q < U(hi)
                        value = totals[source + q] if inside else 0.0
                        grad_masks[target + (x0 + q) * step] = narrow(value, grad_masks)


@numba_inlined_helper
def _store_lanes(grad_features, base, step, lanes_row, at, columns, scale):
    """grad_features[base + m*step] = the sum of lanes_row[at + m*s + b] over b < s in
    order, rounded once, for m < columns (s = 1 and 2 with loops LLVM vectorises)."""
    if scale == 1:
        for m in range(U(columns)):
            grad_features[base + m * step] = narrow(lanes_row[at + m], grad_features)
    elif scale == 2:
        for m in range(U(columns)):
            value = lanes_row[at + m * U(2)] + lanes_row[at + m * U(2) + U(1)]
            grad_features[base + m * step] = narrow(value, grad_features)
    else:
        repeat = U(scale)
        for m in range(U(columns)):
            value = lanes_row[at + m * repeat]
            for b in range(U(1), repeat):
                value += lanes_row[at + m * repeat + b]
            grad_features[base + m * step] = narrow(value, grad_features)


@kernel
def gradients(grad_output, features, masks, grad_features, grad_masks, gs, fs, ms, gfs, gms,
              dims, n, g, top, bottom):
    """Both gradients of batch n, group g, input rows [top, bottom), grad_output read
    once: the feature gradients of those rows, and the mask gradients of the center
    rows c with c*t among them (each center row's own input row), whose grad_output
    rows the feature gradients read too. Input rows a chunk at a time, within the
    scratch budget; in each, the group's channels CHANNELS at a time in order."""
    height, width, k, scale, stride, dilation = (dims[2], dims[3], dims[4], dims[6], dims[7],
                                                 dims[8])
    radius, taps, rows, out_width, _, per_group = _geometry(dims)
    reach = radius * dilation
    padded_width = (out_width + COLUMNS - 1) // COLUMNS * COLUMNS
    inside_from, inside_to, column_offsets, left, arranged_pitch = _column_layout(
        dims, radius, out_width, padded_width)
    # the gather's scratch rows: the zeros a shifted row reads beside it
    before, after = 0, 0
    for j in range(k):
        if inside_from[j] < inside_to[j]:
            lanes = (j - radius) * dilation // stride * scale  # q_j * s
            before, after = max(before, lanes), max(after, -lanes)
    pitch = before + padded_width + after
    per_center = taps * scale * pitch
    most_centers = max(1, GATHER_BUDGET // per_center)
    chunk_rows = max(1, min(bottom - top, (most_centers - 1) * stride + 1 - 2 * reach))
    centers_cap = min(rows, (chunk_rows - 1 + 2 * reach) // stride + 2)
    zero_masks = centers_cap * per_center  # then a row of zeros, for the terms that pad
    weights = accumulation_zeros(zero_masks + padded_width, masks)
    zero_go = centers_cap * scale * pitch
    channel_pitch = zero_go + padded_width
    upstream = accumulation_zeros(CHANNELS * channel_pitch, masks)
    lanes_row = accumulation_zeros(CHANNELS * padded_width, masks)  # one phase's lanes
    sums = _stack_array(weights, BLOCK)
    slots = (k * k * scale + TAPS - 1) // TAPS * TAPS
    mask_offsets = np.empty(chunk_rows * stride * slots, np.int64)
    go_offsets = np.empty(chunk_rows * stride * slots, np.int64)
    padded = np.empty(chunk_rows * stride, np.int64)
    # the mask gradients' scratch: the input rows the owned center rows read, arranged
    # as for the forward, and their sums, register block by register block (center
    # row, pair of output rows, block of columns, group of MASK_TAPS taps); an odd
    # scale's last row is paired with a spare whose sums are never stored
    owned_cap = (chunk_rows - 1) // stride + 1
    row_pitch = stride * arranged_pitch  # the t phases of an input row
    span = min(height, (owned_cap - 1) * stride + 2 * reach + 1)
    zero_row = span * row_pitch
    arranged_channel = zero_row + padded_width
    arranged = accumulation_zeros(CHANNELS * arranged_channel, features)
    pairs, column_blocks = (scale + 1) // 2, padded_width // COLUMNS
    mask_slots = (taps + MASK_TAPS - 1) // MASK_TAPS * MASK_TAPS
    groups = mask_slots // MASK_TAPS
    totals = accumulation_zeros(owned_cap * pairs * column_blocks * groups * MASK_BLOCK,
                                features)
    acc = _stack_array(arranged, MASK_BLOCK)
    row_offsets = np.empty(owned_cap * mask_slots, np.int64)
    tap_slot = np.empty(owned_cap * taps, np.int64)
    mask_padded = np.empty(owned_cap, np.int64)
    first, last = g * per_group, (g + 1) * per_group
    for start in range(top, bottom, chunk_rows):
        end = min(bottom, start + chunk_rows)
        center_lo = max(0, -((reach - start) // stride))  # the centers reaching [start, end)
        centers = max(0, min(rows, (end - 1 + reach) // stride + 1) - center_lo)
        own_lo = (start + stride - 1) // stride  # the center rows this chunk owns
        owned = max(0, min(rows, (end + stride - 1) // stride) - own_lo)
        first_row = max(0, own_lo * stride - reach)  # arranged row 0
        highest = min(height, (own_lo + owned - 1) * stride + reach + 1)
        for center in range(centers):
            for tap in range(taps):
                j = tap % k
                for a in range(scale):
                    _load_masks(weights, ((center * taps + tap) * scale + a) * pitch + before,
                                masks, ms, n, g * taps + tap, (center_lo + center) * scale + a,
                                inside_from[j], inside_to[j])
        _gather_lists(mask_offsets, go_offsets, padded, start, end, center_lo, rows, dims,
                      inside_from, inside_to, before, pitch, slots, zero_masks, zero_go)
        _mask_lists(row_offsets, tap_slot, mask_padded, own_lo, owned, first_row, dims,
                    inside_from, inside_to, column_offsets, row_pitch, zero_row, mask_slots)
        totals.fill(0)
        for block in range(first, last, CHANNELS):
            # as in the forward, the last block ends at the group's end, redoing a few
            # channels (to the same bits) for the feature gradients, not for the mask
            # gradients' sums; unless the group is smaller than a block
            channel = max(first, min(block, last - CHANNELS))
            count, fresh = min(CHANNELS, last - channel), block - channel
            for c in range(count):
                _load_padded_rows(upstream, c * channel_pitch + before, pitch, grad_output, gs,
                                  n, channel + c, center_lo * scale, centers * scale, out_width)
            for h in range(start, end):  # the feature gradients
                for p in range(stride):
                    line = (h - start) * stride + p
                    columns = (width - p + stride - 1) // stride  # input columns of phase p
                    for x0 in range(0, columns * scale, COLUMNS):
                        _block_sums(sums, weights, upstream, padded[line], mask_offsets,
                                    go_offsets, line * slots, line * slots, x0, x0,
                                    channel_pitch)
                        for c in range(CHANNELS):
                            for q in range(U(COLUMNS)):
                                lanes_row[U(c * padded_width + x0) + q] = sums[
                                    U(c * COLUMNS) + q]
                    for c in range(count):  # the s lanes of each input column, in order
                        _store_lanes(grad_features, U(n * gfs[0] + (channel + c) * gfs[1]
                                                      + h * gfs[2] + p * gfs[3]),
                                     U(stride * gfs[3]), lanes_row, U(c * padded_width),
                                     columns, scale)
            for c in range(fresh, count if owned > 0 else fresh):  # the mask gradients
                base = n * fs[0] + (channel + c) * fs[1]
                for row in range(first_row, highest):
                    _arrange_row(arranged, (c - fresh) * arranged_channel
                                 + (row - first_row) * row_pitch, features, base + row * fs[2],
                                 fs[3], dims, left, arranged_pitch)
            for local in range(owned):
                for pair in range(pairs):
                    go_at = (fresh * channel_pitch + before
                             + ((own_lo - center_lo + local) * scale + 2 * pair) * pitch)
                    go_second = pitch if 2 * pair + 1 < scale else 0  # or the spare
                    for column in range(column_blocks):
                        block_at = ((local * pairs + pair) * column_blocks + column) * groups
                        for group in range(mask_padded[local] // MASK_TAPS):
                            _mask_sums(acc, totals, (block_at + group) * MASK_BLOCK,
                                       row_offsets, local * mask_slots + group * MASK_TAPS,
                                       upstream, go_at + column * COLUMNS, go_second,
                                       channel_pitch, arranged, column * COLUMNS,
                                       arranged_channel, count - fresh)
        _store_mask_gradients(grad_masks, gms, n, g, own_lo, owned, dims, totals, tap_slot,
                              inside_from, inside_to, out_width, column_blocks, groups)
