"""The compiled CPU forward (Numba): the sums of a block of output columns for
several channels at once, kept in vector registers while the taps are added.

A call computes one work item, (batch n, group g, center rows [top, bottom)), as
the backward kernels do (``jit_kernels``: flat arrays, element strides, ``dims``),
up to CHUNK center rows at a time. The masks of those rows are read once into
scratch; then, block of CHANNELS channels by block, the input rows they read are
laid out once in scratch so that tap (i, j) of output column x is one element at
a fixed offset from x: ``arranged[offset_ij + x]`` (each input column repeated s
times; with stride t, the t phases of an input row, columns p, p + t, ..., in t
separate rows). A block of COLUMNS output columns of the CHANNELS channels is
then summed TAPS taps at a time: one load of each tap's masks serves every
channel, and the sums stay in registers (a small stack array LLVM promotes)
until the block is stored, rounded once.

Every output adds its taps in the same order as the naive reference, (i, j)
row-major, with no fused multiply-add: results are the same bitwise for any
thread count, block or layout. Tap rows outside the input are skipped. Tap
columns outside it read zeros from the padding of the arranged rows with their
masks zero in scratch, and the list of taps is padded to a multiple of TAPS with
taps that read zeros: each adds an exact zero (a sum starts at +0, and x + 0 is
x), and an Inf or NaN mask there never meets a feature.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array

from .jit_compile import kernel, numba_inlined_helper
from .jit_dtypes import accumulation_zeros, narrow, widen
from .jit_kernels import U, _geometry, _tap_columns

# Output columns and channels summed together: their CHANNELS * COLUMNS sums stay in
# vector registers while the taps are added, TAPS at a time.
COLUMNS = 16
CHANNELS = 8
TAPS = 5
CHUNK = 4  # center rows whose masks are read before the channels are swept
MASK_BUDGET = 1 << 16  # at most this many mask elements in scratch (or one center row's)
BLOCK = CHANNELS * COLUMNS


@intrinsic
def _stack_array(typingctx, like, size):
    """A 1-D array of ``size`` (a literal) elements of ``like``'s dtype on the
    stack: LLVM sees it cannot alias any other array, and keeps it in registers."""
    if not isinstance(size, types.IntegerLiteral) or not isinstance(like, types.Array):
        return None
    count = size.literal_value
    array_type = types.Array(like.dtype, 1, "C")

    def codegen(context, builder, signature, args):
        element = context.get_data_type(like.dtype)
        itemsize = context.get_abi_sizeof(element)
        with builder.goto_entry_block():
            data = builder.alloca(ir.ArrayType(element, count))
            data.align = 64
        array = context.make_array(array_type)(context, builder)
        intp = context.get_value_type(types.intp)
        populate_array(array, data=builder.bitcast(data, element.as_pointer()),
                       shape=[ir.Constant(intp, count)], strides=[ir.Constant(intp, itemsize)],
                       itemsize=ir.Constant(intp, itemsize), meminfo=None)
        return array._getvalue()

    return array_type(like, size), codegen


@numba_inlined_helper
def _add_taps(sums, weights, rows, mask_offsets, row_offsets, mask_slot, row_slot, at_mask,
              at_row, channel_pitch):
    """The TAPS taps listed from mask_offsets[mask_slot] and row_offsets[row_slot], in
    order, into sums[c*COLUMNS + q] for q < COLUMNS and c < CHANNELS: each mask is
    loaded once for all the channels."""
    m, r = U(mask_slot), U(row_slot)
    w0, w1, w2 = U(mask_offsets[m] + at_mask), U(mask_offsets[m + U(1)] + at_mask), U(
        mask_offsets[m + U(2)] + at_mask)
    w3, w4 = U(mask_offsets[m + U(3)] + at_mask), U(mask_offsets[m + U(4)] + at_mask)
    r0, r1, r2 = U(row_offsets[r] + at_row), U(row_offsets[r + U(1)] + at_row), U(
        row_offsets[r + U(2)] + at_row)
    r3, r4 = U(row_offsets[r + U(3)] + at_row), U(row_offsets[r + U(4)] + at_row)
    for q in range(U(COLUMNS)):
        m0, m1, m2, m3, m4 = (weights[w0 + q], weights[w1 + q], weights[w2 + q],
                              weights[w3 + q], weights[w4 + q])
        for c in range(U(CHANNELS)):
            at = c * U(channel_pitch) + q
            total = sums[c * U(COLUMNS) + q] + m0 * rows[r0 + at]
            total = total + m1 * rows[r1 + at]
            total = total + m2 * rows[r2 + at]
            total = total + m3 * rows[r3 + at]
            sums[c * U(COLUMNS) + q] = total + m4 * rows[r4 + at]


@numba_inlined_helper
def _block_sums(sums, weights, rows, taps_used, mask_offsets, row_offsets, mask_table,
                row_table, at_mask, at_row, channel_pitch):
    """sums[c*COLUMNS + q] = the sum over tap < taps_used, in order, of
    weights[mask_offsets[mask_table + tap] + at_mask + q] *
    rows[row_offsets[row_table + tap] + at_row + c*channel_pitch + q]
    for c < CHANNELS and q < COLUMNS. ``taps_used`` is a multiple of TAPS (the taps
    after the real ones add exact zeros)."""
    for q in range(U(BLOCK)):
        sums[q] = 0
    for tap in range(0, taps_used, TAPS):
        _add_taps(sums, weights, rows, mask_offsets, row_offsets, mask_table + tap,
                  row_table + tap, at_mask, at_row, channel_pitch)


@numba_inlined_helper
def _arrange_row(rows, at, features, base, step, dims, left, pitch):
    """Input row ``features[base + w*step]``, w < W, in the accumulation dtype:
    repeated s times (rows[at + left + w*s + b] for b < s) with stride 1, or split
    into its t phases (rows[at + (w % t)*pitch + left + w // t]) with scale 1."""
    width, scale, stride = dims[3], dims[6], dims[7]
    start, target, jump = U(base), U(at + left), U(step)
    if stride > 1:  # one pass over the row, phase by phase within each group of t
        phases, whole = U(stride), U(width // stride)
        for m in range(whole):
            for p in range(phases):
                rows[target + p * U(pitch) + m] = widen(features[start + (m * phases + p) * jump])
        for p in range(U(width - whole * phases)):
            column = start + (whole * phases + p) * jump
            rows[target + p * U(pitch) + whole] = widen(features[column])
    elif scale == 1 and step == 1:  # the common layouts get loops LLVM vectorises
        for w in range(U(width)):
            rows[target + w] = widen(features[start + w])
    elif scale == 2 and step == 1:
        for w in range(U(width)):
            value = widen(features[start + w])
            rows[target + w * U(2)] = value
            rows[target + w * U(2) + U(1)] = value
    else:
        repeat = U(scale)
        for w in range(U(width)):
            value = widen(features[start + w * jump])
            for b in range(repeat):
                rows[target + w * repeat + b] = value


@numba_inlined_helper
def _load_masks(weights, at, masks, ms, n, channel, y, lo, hi):
    """weights[at + x] = masks[n, channel, y, x] for x in [lo, hi) (the rest is left
    as it is: zero)."""
    if hi <= lo:
        return
    source = U(n * ms[0] + channel * ms[1] + y * ms[2] + lo * ms[3])
    target, step = U(at + lo), U(ms[3])
    for x in range(U(hi - lo)):  # one loop for every layout: masks are few
        weights[target + x] = widen(masks[source + x * step])


@numba_inlined_helper
def _store_block(out, os, n, channel, y, x0, count, sums, at):
    """out[n, channel, y, x0 + q] = sums[at + q] for q < count, rounded once."""
    target, step, source = U(n * os[0] + channel * os[1] + y * os[2] + x0 * os[3]), U(os[3]), U(at)
    if count == COLUMNS and step == 1:  # a whole block: a loop LLVM unrolls and vectorises
        for q in range(U(COLUMNS)):
            out[target + q] = narrow(sums[source + q], out)
    else:
        for q in range(U(count)):
            out[target + q * step] = narrow(sums[source + q], out)


@numba_inlined_helper
def _sum_rows(out, os, n, channel, count, y0, scale, out_width, sums, weights, rows,
              mask_offsets, row_offsets, at_table, slots, taps_used, channel_pitch):
    """The s output rows from y0 of the ``count`` channels from ``channel`` (at most
    CHANNELS; all CHANNELS are summed), block by block. Output row y0 + a takes its
    taps' offsets from mask_offsets[at_table + a*slots:] and row_offsets[at_table:]."""
    for a in range(scale):
        for x0 in range(0, out_width, COLUMNS):
            _block_sums(sums, weights, rows, taps_used, mask_offsets, row_offsets,
                        at_table + a * slots, at_table, x0, x0, channel_pitch)
            for c in range(count):
                _store_block(out, os, n, channel + c, y0 + a, x0,
                             min(COLUMNS, out_width - x0), sums, c * COLUMNS)


@kernel
def forward(features, masks, out, fs, ms, os, dims, n, g, top, bottom):
    """Outputs of batch n, group g, center rows [top, bottom), up to CHUNK rows at a time."""
    height, k, scale, stride, dilation = dims[2], dims[4], dims[6], dims[7], dims[8]
    radius, taps, _, out_width, _, per_group = _geometry(dims)
    reach = radius * dilation  # in input rows, either side
    padded_width = (out_width + COLUMNS - 1) // COLUMNS * COLUMNS
    column_offsets = np.empty(k, np.int64)  # where column x's tap column j reads, less x
    inside_from = np.empty(k, np.int64)  # the output columns whose tap column j is inside
    inside_to = np.empty(k, np.int64)
    side = 0  # the farthest a tap column reads beside the row while inside it somewhere
    for j in range(k):
        inside_from[j], inside_to[j], _ = _tap_columns(j, radius, dims, out_width)
        if inside_from[j] < inside_to[j]:
            side = max(side, abs(j - radius) * dilation)
    left = (side + stride - 1) // stride * scale  # zeros before each arranged row
    pitch = left + padded_width + side // stride * scale  # one phase of one input row
    row_pitch = stride * pitch  # the t phases of an input row
    # center rows whose masks are read together: CHUNK, or fewer where rows are long
    chunk_rows = max(1, min(CHUNK, bottom - top, MASK_BUDGET // (taps * scale * padded_width)))
    # the input rows they read, inside the input: never more than its height, so
    # scratch does not grow with the dilation
    span = min(height, (chunk_rows - 1) * stride + 2 * reach + 1)
    zero_row = span * row_pitch  # then zeros, read by the taps that pad the list
    channel_pitch = zero_row + padded_width
    rows = accumulation_zeros(CHANNELS * channel_pitch, features)
    zero_masks = chunk_rows * scale * taps * padded_width  # the masks, then a row of zeros
    weights = accumulation_zeros(zero_masks + padded_width, features)
    sums = _stack_array(rows, BLOCK)
    slots = (taps + TAPS - 1) // TAPS * TAPS  # taps per output row, padded
    padded = np.empty(chunk_rows, np.int64)  # the taps of a row, padded to a multiple of TAPS
    mask_offsets = np.empty(chunk_rows * scale * slots, np.int64)
    row_offsets = np.empty(chunk_rows * scale * slots, np.int64)
    for j in range(k):
        shift = (j - radius) * dilation
        column_offsets[j] = shift % stride * pitch + left + shift // stride * scale
    first, last = g * per_group, (g + 1) * per_group
    for chunk in range(top, bottom, chunk_rows):
        rows_here = min(chunk_rows, bottom - chunk)
        # the input rows these center rows read, inside the input; the first is arranged row 0
        first_row = max(0, chunk * stride - reach)
        highest = min(height, chunk * stride - reach + (rows_here - 1) * stride + 2 * reach + 1)
        for local in range(rows_here):  # each row's masks and tap offsets
            hc = chunk + local
            used = 0  # the taps whose input row is inside, in order
            for i in range(k):
                source_row = hc * stride + (i - radius) * dilation
                if source_row < 0 or source_row >= height:
                    continue
                for j in range(k):
                    tap = i * k + j
                    if inside_from[j] >= inside_to[j]:
                        continue  # never inside: skipped, as a tap row outside is
                    for a in range(scale):
                        at = ((local * scale + a) * taps + tap) * padded_width
                        mask_offsets[(local * scale + a) * slots + used] = at
                        _load_masks(weights, at, masks, ms, n, g * taps + tap, hc * scale + a,
                                    inside_from[j], inside_to[j])
                    row_offsets[local * scale * slots + used] = (
                        (source_row - first_row) * row_pitch + column_offsets[j])
                    used += 1
            padded[local] = (used + TAPS - 1) // TAPS * TAPS
            for slot in range(used, slots):  # the taps that pad the list read zeros
                for a in range(scale):
                    mask_offsets[(local * scale + a) * slots + slot] = zero_masks
                row_offsets[local * scale * slots + slot] = zero_row
        for block in range(first, last, CHANNELS):
            # the last block ends at the group's end (redoing a few channels, to the same
            # bits) unless the group is smaller than a block, whose extra sums are dropped
            channel = max(first, min(block, last - CHANNELS))
            count = min(CHANNELS, last - channel)
            for c in range(count):
                base = n * fs[0] + (channel + c) * fs[1]
                for row in range(first_row, highest):
                    _arrange_row(rows, c * channel_pitch + (row - first_row) * row_pitch,
                                 features, base + row * fs[2], fs[3], dims, left, pitch)
            for local in range(rows_here):
                _sum_rows(out, os, n, channel, count, (chunk + local) * scale, scale,
                          out_width, sums, weights, rows, mask_offsets, row_offsets,
                          local * scale * slots, slots, padded[local], channel_pitch)
