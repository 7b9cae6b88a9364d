"""The compiled CPU forward for narrow images (Numba): the sums of a few output
pixels of one row, each over LANES channels at once, so the vector registers run
over channels rather than over output columns.

``jit_forward`` keeps 16 output columns of 8 channels in its registers: on a row
of 7 or 14 columns most of those lanes compute nothing. Here a block is PIXELS
consecutive output columns of one row by LANES channels, one vector of channels
per pixel; the PIXELS sums are independent, so their additions overlap. A tap
costs one mask (broadcast) and one vector of channels per pixel. The dispatcher
(``jit_dispatch``) picks this kernel by shape.

A call computes one work item, (batch n, groups [group_from, group_to), center rows
[top, bottom)): the dispatcher makes items of several groups where there are many
(involution: 16 channels a group), since a group's work is small. Per group, the
input rows the center rows read are laid out once, in a ring of rows, with the
channels innermost, ``rows[((row % span)*pitch + side + column)*LANES + lane]``, and
zero columns either side for the taps outside the input. Masks are read in place,
where their dtype is the sums' and every mask at a tap column outside the input
(times a zero feature there) is finite; otherwise, center row by center row, into
scratch, zero where the tap is outside.

Every output adds its taps in the naive reference's order, (i, j) row-major, with
no fused multiply-add, so results are the same bits as ``jit_forward``'s for any
thread count, block or layout: a tap row outside the input is skipped, and a tap
column outside it adds an exact zero (a finite or zero mask times a zero feature;
a sum starts at +0 and x + 0 is x), so an Inf or NaN mask there never meets a
feature.
"""

from __future__ import annotations

import numpy as np
from numba.extending import overload

from .jit_compile import OVERLOAD_OPTIONS, kernel, numba_inlined_helper
from .jit_dtypes import accumulation_zeros, narrow, widen
from .jit_forward import _stack_array
from .jit_kernels import U, _geometry, _tap_columns

LANES = 16  # channels summed together: one vector register of fp32
PIXELS = 8  # output columns summed together, each its own chain of additions
BLOCK = PIXELS * LANES
TAPS = 5  # taps added per pass over the sums


@numba_inlined_helper
def _add_taps(sums, weights, rows, mask_offsets, row_offsets, slot, at_mask, at_row,
              pixel_masks, pixel_rows):
    """The TAPS taps listed from mask_offsets[slot] and row_offsets[slot], in order,
    into sums[p*LANES + lane] for p < PIXELS and lane < LANES: pixel p reads its
    masks pixel_masks[p] and its rows pixel_rows[p] past the tap's."""
    m = U(slot)
    w0, w1, w2 = U(mask_offsets[m] + at_mask), U(mask_offsets[m + U(1)] + at_mask), U(
        mask_offsets[m + U(2)] + at_mask)
    w3, w4 = U(mask_offsets[m + U(3)] + at_mask), U(mask_offsets[m + U(4)] + at_mask)
    r0, r1, r2 = U(row_offsets[m] + at_row), U(row_offsets[m + U(1)] + at_row), U(
        row_offsets[m + U(2)] + at_row)
    r3, r4 = U(row_offsets[m + U(3)] + at_row), U(row_offsets[m + U(4)] + at_row)
    for lane in range(U(LANES)):  # vectorised over the lanes, the pixels unrolled
        for p in range(U(PIXELS)):
            wp, at = U(pixel_masks[p]), U(pixel_rows[p]) + lane
            total = sums[p * U(LANES) + lane] + weights[w0 + wp] * rows[r0 + at]
            total = total + weights[w1 + wp] * rows[r1 + at]
            total = total + weights[w2 + wp] * rows[r2 + at]
            total = total + weights[w3 + wp] * rows[r3 + at]
            sums[p * U(LANES) + lane] = total + weights[w4 + wp] * rows[r4 + at]


@numba_inlined_helper
def _add_tap(sums, weights, rows, at_weight, at_row, pixel_masks, pixel_rows):
    """One tap, as _add_taps adds each of its TAPS."""
    for lane in range(U(LANES)):
        for p in range(U(PIXELS)):
            at = U(pixel_rows[p]) + lane
            sums[p * U(LANES) + lane] = (sums[p * U(LANES) + lane]
                                         + weights[U(at_weight) + U(pixel_masks[p])]
                                         * rows[U(at_row) + at])


@numba_inlined_helper
def _pixel_sums(sums, weights, rows, mask_offsets, row_offsets, first, used, at_mask, at_row,
                pixel_masks, pixel_rows):
    """sums[p*LANES + lane] = the sum over tap < used, in order, of
    weights[mask_offsets[first + tap] + at_mask + pixel_masks[p]] *
    rows[row_offsets[first + tap] + at_row + pixel_rows[p] + lane],
    for p < PIXELS and lane < LANES."""
    for q in range(U(BLOCK)):
        sums[q] = 0
    whole = used // TAPS * TAPS
    for tap in range(first, first + whole, TAPS):
        _add_taps(sums, weights, rows, mask_offsets, row_offsets, tap, at_mask, at_row,
                  pixel_masks, pixel_rows)
    for tap in range(first + whole, first + used):
        _add_tap(sums, weights, rows, mask_offsets[tap] + at_mask, row_offsets[tap] + at_row,
                 pixel_masks, pixel_rows)


@numba_inlined_helper
def _store_pixels(out, os, n, channel, count, y, x0, pixels, step, sums):
    """out[n, channel + lane, y, x0 + p*step] = sums[p*LANES + lane] for lane < count
    and p < pixels, rounded once; along the output's unit stride where it has one."""
    base, column_step = n * os[0] + channel * os[1] + y * os[2] + x0 * os[3], step * os[3]
    if os[1] == 1:  # channels_last: a pixel's channels are contiguous
        for p in range(pixels):
            target = U(base + p * column_step)
            for lane in range(U(count)):
                out[target + lane] = narrow(sums[U(p) * U(LANES) + lane], out)
    else:
        for lane in range(count):
            target, jump = U(base + lane * os[1]), U(column_step)
            for p in range(U(pixels)):
                out[target + p * jump] = narrow(sums[p * U(LANES) + U(lane)], out)


def _in_place(masks, weights):
    """``masks`` where the kernels can read them as they are, else ``weights``."""
    raise NotImplementedError("compiled-only")


def _in_place_possible(masks, weights):
    """Whether ``masks`` can be read as they are (their dtype is the sums')."""
    raise NotImplementedError("compiled-only")


@overload(_in_place, jit_options=OVERLOAD_OPTIONS)
def _in_place_overload(masks, weights):
    if masks.dtype == weights.dtype:
        return lambda masks, weights: masks
    return lambda masks, weights: weights


@overload(_in_place_possible, jit_options=OVERLOAD_OPTIONS)
def _in_place_possible_overload(masks, weights):
    possible = masks.dtype == weights.dtype
    return lambda masks, weights: possible


@numba_inlined_helper
def _load_masks(weights, at, masks, source, step, scale, padded_centers, lo, hi):
    """weights[at + b*padded_centers + center] = masks[source + (center*scale + b)*step]
    for b < scale and centers [lo, hi), and zero for the other centers."""
    for b in range(scale):
        target = at + b * padded_centers
        for center in range(U(lo)):
            weights[U(target) + center] = 0
        for center in range(U(hi), U(padded_centers)):
            weights[U(target) + center] = 0
        if step == 1 and scale == 1:  # the common layout gets a loop LLVM vectorises
            for center in range(U(lo), U(hi)):
                weights[U(target) + center] = widen(masks[U(source) + center])
        else:
            for center in range(lo, hi):
                weights[target + center] = widen(masks[source + (center * scale + b) * step])


@numba_inlined_helper
def _arrange_row(rows, at, features, source, channel_step, count, width, step):
    """rows[at + w*LANES + lane] = features[source + lane*channel_step + w*step] for
    w < width and lane < count: one input row of a block, channels innermost."""
    if count == LANES:  # pixel by pixel: one store of LANES values each
        for w in range(U(width)):
            start, target = U(source + w * step), U(at) + w * U(LANES)
            for lane in range(U(LANES)):
                rows[target + lane] = widen(features[start + lane * U(channel_step)])
        return
    for lane in range(count):
        start, target = U(source + lane * channel_step), U(at + lane)
        if step == 1:
            for w in range(U(width)):
                rows[target + w * U(LANES)] = widen(features[start + w])
        else:
            for w in range(U(width)):
                rows[target + w * U(LANES)] = widen(features[start + w * U(step)])


@numba_inlined_helper
def _finite_outside(masks, ms, n, g, taps, top, bottom, centers, inside_from, inside_to, dims):
    """Whether every mask of batch n, group g and center rows [top, bottom) at a tap
    column outside the input (where it meets a zero feature) is finite (or, for
    contiguous masks, every mask of such a tap column)."""
    k, scale = dims[4], dims[6]
    width = centers * scale
    planes = ms[3] == 1 and ms[2] == width  # rows [top, bottom) of a tap: one stretch
    total = 0.0
    for j in range(k):
        lo, hi = inside_from[j], inside_to[j]
        if lo >= hi or (lo == 0 and hi == centers):
            continue  # never inside (never read), or inside everywhere
        for i in range(k):
            plane = n * ms[0] + (g * taps + i * k + j) * ms[1]
            if planes:  # all of it, in a loop LLVM vectorises
                start = U(plane + top * scale * width)
                for x in range(U((bottom - top) * scale * width)):
                    total += masks[start + x] * 0.0
                continue
            for y in range(top * scale, bottom * scale):
                source = plane + y * ms[2]
                for x in range(lo * scale):
                    total += masks[U(source + x * ms[3])] * 0.0
                for x in range(hi * scale, width):
                    total += masks[U(source + x * ms[3])] * 0.0
    return total == 0.0  # x * 0 is NaN for an Inf or NaN x


@kernel
def forward(features, masks, out, fs, ms, os, dims, n, group_from, group_to, top, bottom):
    """Outputs of batch n, groups [group_from, group_to), center rows [top, bottom)."""
    height, width, k = dims[2], dims[3], dims[4]
    scale, stride, dilation = dims[6], dims[7], dims[8]
    radius, taps, _, out_width, _, per_group = _geometry(dims)
    reach = radius * dilation  # in input rows, either side
    centers = out_width // scale  # window centers per row
    padded_centers = (centers + PIXELS - 1) // PIXELS * PIXELS
    inside_from = np.empty(k, np.int64)  # the centers whose tap column j is inside
    inside_to = np.empty(k, np.int64)
    side = 0  # the farthest a tap column reads beside the row while inside it somewhere
    columns = 0  # tap columns inside somewhere; the others are skipped, as rows outside are
    for j in range(k):
        lo, hi, _ = _tap_columns(j, radius, dims, out_width)
        inside_from[j], inside_to[j] = lo // scale, hi // scale
        if lo < hi:
            side = max(side, abs(j - radius) * dilation)
            columns += 1
    pitch = side + width + side  # one arranged input row, in pixels
    # The input rows a center row reads, kept in a ring (row r in slot r % span) per
    # block of channels: each input row is arranged once per group.
    span = min(height, 2 * reach + 1)
    blocks = (per_group + LANES - 1) // LANES
    block_pitch = span * pitch * LANES
    rows = accumulation_zeros(blocks * block_pitch, features)
    # The taps (i, j) in order, j inside somewhere: where their masks are, in place
    # (less the center row's) or in scratch (less the sub-pixel's), and their shifts.
    in_place_offsets = np.empty(k * columns, np.int64)
    copied_offsets = np.empty(k * columns, np.int64)
    shifts = np.empty(k * columns, np.int64)
    row_offsets = np.empty(k * columns, np.int64)  # those of the center row at hand
    tap = 0
    for i in range(k):
        for j in range(k):
            if inside_from[j] < inside_to[j]:
                in_place_offsets[tap] = (i * k + j) * ms[1]
                copied_offsets[tap] = tap * scale * padded_centers
                shifts[tap] = side + (j - radius) * dilation
                tap += 1
    # a center row's masks where they are not read in place: weights[((a*k*columns + tap)
    # *scale + b)*padded_centers + center], zero where the tap is outside
    weights = accumulation_zeros(scale * k * columns * scale * padded_centers, features)
    source = _in_place(masks, weights)  # the masks themselves, where their dtype allows
    sums = _stack_array(rows, BLOCK)
    pixel_masks = _stack_array(row_offsets, PIXELS)
    pixel_rows = _stack_array(row_offsets, PIXELS)
    lanes = min(LANES, per_group)
    for g in range(group_from, group_to):
        first, last = g * per_group, (g + 1) * per_group
        # in place only if every mask a zero feature meets (a tap outside) is finite
        in_place = _in_place_possible(masks, weights) and _finite_outside(
            source, ms, n, g, taps, top, bottom, centers, inside_from, inside_to, dims)
        arranged_to = 0  # input rows below this are in the ring
        for hc in range(top, bottom):
            lowest = max(0, hc * stride - reach)
            highest = min(height, hc * stride + reach + 1)
            for row in range(max(arranged_to, lowest), highest):
                for block in range(blocks):
                    channel = max(first, min(first + block * LANES, last - LANES))
                    _arrange_row(rows, block * block_pitch + ((row % span) * pitch + side) * LANES,
                                 features, n * fs[0] + channel * fs[1] + row * fs[2], fs[1],
                                 lanes, width, fs[3])
            arranged_to = highest
            # the tap rows inside the input: i in [i_from, i_to)
            i_from = max(0, -((hc * stride - radius * dilation) // dilation))
            i_to = min(k, (height - 1 - hc * stride + radius * dilation) // dilation + 1)
            i_from = min(i_from, i_to)
            for i in range(i_from, i_to):
                slot = ((hc * stride + (i - radius) * dilation) % span) * pitch
                for tap in range(i * columns, (i + 1) * columns):
                    row_offsets[tap] = (slot + shifts[tap]) * LANES
            mask_row = n * ms[0] + g * taps * ms[1] + hc * scale * ms[2]
            if not in_place:  # the masks into scratch, zero outside
                for i in range(i_from, i_to):
                    tap = i * columns
                    for j in range(k):
                        if inside_from[j] < inside_to[j]:
                            for a in range(scale):
                                at = (a * k * columns + tap) * scale * padded_centers
                                origin = mask_row + a * ms[2] + in_place_offsets[tap]
                                _load_masks(weights, at, masks, origin, ms[3], scale,
                                            padded_centers, inside_from[j], inside_to[j])
                            tap += 1
            for block in range(blocks):
                # the last block ends at the group's end (redoing a few channels, to the
                # same bits) unless the group is narrower than a block (extra lanes dropped)
                channel = max(first, min(first + block * LANES, last - LANES))
                for a in range(scale):
                    for b in range(scale):
                        for center in range(0, centers, PIXELS):
                            count = min(PIXELS, centers - center)
                            # pixels past the row repeat its last one (and are dropped)
                            for p in range(PIXELS):
                                pixel_rows[p] = min(p, count - 1) * stride * LANES
                                pixel_masks[p] = (min(p, count - 1) * scale * ms[3] if in_place
                                                  else p)
                            if in_place:
                                at_mask = mask_row + a * ms[2] + (center * scale + b) * ms[3]
                            else:
                                at_mask = ((a * k * columns * scale + b) * padded_centers
                                           + center)
                            _pixel_sums(sums, source if in_place else weights, rows,
                                        in_place_offsets if in_place else copied_offsets,
                                        row_offsets, i_from * columns, (i_to - i_from) * columns,
                                        at_mask, block * block_pitch + center * stride * LANES,
                                        pixel_masks, pixel_rows)
                            _store_pixels(out, os, n, channel, lanes, hc * scale + a,
                                          center * scale + b, count, scale, sums)
