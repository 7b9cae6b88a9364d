"""The CPU kernels, compiled by Numba (LLVM) on first use and cached on disk.

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

from numba import njit

from . import jit_cache  # noqa: F401  (places the on-disk cache before anything compiles)
from .jit_dtypes import accumulation_zeros, narrow, widen


@njit(cache=True)
def _accumulate(total, weights, source, lo, hi, stride, offset):
    """total[wc] += weights[wc] * source[wc*stride + offset] over [lo, hi)."""
    if stride == 1:
        for wc in range(lo, hi):
            total[wc] += weights[wc] * source[wc + offset]
    else:
        for wc in range(lo, hi):
            total[wc] += weights[wc] * source[wc * stride + offset]


@njit(cache=True)
def _spread(target, weights, values, lo, hi, stride, offset):
    """target[wc*stride + offset] += weights[wc] * values[wc] over [lo, hi)."""
    if stride == 1:
        for wc in range(lo, hi):
            target[wc + offset] += weights[wc] * values[wc]
    else:
        for wc in range(lo, hi):
            target[wc * stride + offset] += weights[wc] * values[wc]


@njit(cache=True)
def _load_center_row(split, array, strides, n, channel, hc, scale):
    """split[a, b, wc] = array[n, channel, hc*s + a, wc*s + b]."""
    centers = split.shape[2]
    for a in range(scale):
        base = n * strides[0] + channel * strides[1] + (hc * scale + a) * strides[2]
        for b in range(scale):
            target = split[a, b]
            for wc in range(centers):
                target[wc] = widen(array[base + (wc * scale + b) * strides[3]])


@njit(cache=True)
def _store_center_row(array, strides, n, channel, hc, split):
    """array[n, channel, hc*s + a, wc*s + b] = split[a, b, wc], rounded once."""
    scale, centers = split.shape[0], split.shape[2]
    for a in range(scale):
        base = n * strides[0] + channel * strides[1] + (hc * scale + a) * strides[2]
        for b in range(scale):
            source = split[a, b]
            for wc in range(centers):
                array[base + (wc * scale + b) * strides[3]] = narrow(source[wc], array)


@njit(cache=True, nogil=True)
def forward(features, masks, out, fs, ms, os, dims, n, g, top, bottom):
    """Outputs of batch n, group g, center rows [top, bottom)."""
    channels, height, width = dims[1], dims[2], dims[3]
    k, groups, scale, stride, dilation = dims[4], dims[5], dims[6], dims[7], dims[8]
    radius, taps = (k - 1) // 2, k * k
    centers = (width + stride - 1) // stride
    per_group = channels // groups
    weights = accumulation_zeros((taps, scale, scale, centers), features)
    total = accumulation_zeros((scale, scale, centers), features)
    row = accumulation_zeros(width, features)
    for hc in range(top, bottom):
        # the masks of this center row, read once for all channels of the group
        for tap in range(taps):
            _load_center_row(weights[tap], masks, ms, n, g * taps + tap, hc, scale)
        for channel in range(g * per_group, (g + 1) * per_group):
            total[:] = 0
            for i in range(k):
                source_row = hc * stride + (i - radius) * dilation
                if source_row < 0 or source_row >= height:
                    continue
                base = n * fs[0] + channel * fs[1] + source_row * fs[2]
                for w in range(width):
                    row[w] = widen(features[base + w * fs[3]])
                for j in range(k):
                    offset = (j - radius) * dilation
                    # the centers whose tap j reads inside the row
                    lo = max(0, -(offset // stride))
                    hi = min(centers, (width - 1 - offset) // stride + 1)
                    for a in range(scale):
                        for b in range(scale):
                            _accumulate(total[a, b], weights[i * k + j, a, b], row, lo, hi,
                                        stride, offset)
            _store_center_row(out, os, n, channel, hc, total)


@njit(cache=True, nogil=True)
def grad_masks(grad_output, features, grad_masks, gs, fs, ms, dims, n, g, top, bottom):
    """Mask gradients of batch n, group g, center rows [top, bottom)."""
    channels, height, width = dims[1], dims[2], dims[3]
    k, groups, scale, stride, dilation = dims[4], dims[5], dims[6], dims[7], dims[8]
    radius, taps = (k - 1) // 2, k * k
    centers = (width + stride - 1) // stride
    per_group = channels // groups
    totals = accumulation_zeros((taps, scale, scale, centers), features)
    upstream = accumulation_zeros((scale, scale, centers), features)
    row = accumulation_zeros(width, features)
    for hc in range(top, bottom):
        totals[:] = 0  # taps outside the input keep an exact zero
        for channel in range(g * per_group, (g + 1) * per_group):  # summed in channel order
            _load_center_row(upstream, grad_output, gs, n, channel, hc, scale)
            for i in range(k):
                source_row = hc * stride + (i - radius) * dilation
                if source_row < 0 or source_row >= height:
                    continue
                base = n * fs[0] + channel * fs[1] + source_row * fs[2]
                for w in range(width):
                    row[w] = widen(features[base + w * fs[3]])
                for j in range(k):
                    offset = (j - radius) * dilation
                    # the centers whose tap j reads inside the row
                    lo = max(0, -(offset // stride))
                    hi = min(centers, (width - 1 - offset) // stride + 1)
                    for a in range(scale):
                        for b in range(scale):
                            _accumulate(totals[i * k + j, a, b], upstream[a, b], row, lo, hi,
                                        stride, offset)
        for tap in range(taps):
            _store_center_row(grad_masks, ms, n, g * taps + tap, hc, totals[tap])


@njit(cache=True, nogil=True)
def grad_features(grad_output, masks, grad_features, gs, ms, fs, dims, n, g, top, bottom):
    """Feature gradients of batch n, group g, input rows [top, bottom): a gather,
    each input row summing the outputs that read it, tap by tap."""
    channels, height, width = dims[1], dims[2], dims[3]
    k, groups, scale, stride, dilation = dims[4], dims[5], dims[6], dims[7], dims[8]
    radius, taps = (k - 1) // 2, k * k
    rows, centers = (height + stride - 1) // stride, (width + stride - 1) // stride
    per_group = channels // groups
    weights = accumulation_zeros((taps, scale, scale, centers), masks)
    upstream = accumulation_zeros((scale, scale, centers), masks)
    totals = accumulation_zeros((per_group, width), masks)
    for h in range(top, bottom):
        totals[:] = 0
        for i in range(k):
            # the center row whose tap row i reads input row h, if any
            reach = h - (i - radius) * dilation
            if reach < 0 or reach % stride != 0 or reach // stride >= rows:
                continue
            hc = reach // stride
            for tap in range(taps):
                _load_center_row(weights[tap], masks, ms, n, g * taps + tap, hc, scale)
            for c in range(per_group):
                _load_center_row(upstream, grad_output, gs, n, g * per_group + c, hc, scale)
                total = totals[c]
                for j in range(k):
                    offset = (j - radius) * dilation
                    # the centers whose tap j reads inside the row
                    lo = max(0, -(offset // stride))
                    hi = min(centers, (width - 1 - offset) // stride + 1)
                    for a in range(scale):
                        for b in range(scale):
                            _spread(total, weights[i * k + j, a, b], upstream[a, b], lo, hi,
                                    stride, offset)
        for c in range(per_group):
            base = n * fs[0] + (g * per_group + c) * fs[1] + h * fs[2]
            total = totals[c]
            for w in range(width):
                grad_features[base + w * fs[3]] = narrow(total[w], grad_features)

