"""The pure-PyTorch reassembly (CARAFE and its strided, dilated form): any
device, memory O(input + output).

Work happens in a channels-last view, where an output tile (N, Hc, s, Wc, s, G, Cg)
and the window centers (N, Hc, 1, Wc, 1, G, Cg) line up, so each of the k*k taps
is one broadcast multiply-add over contiguous channels, restricted to the centers
whose tap lies inside the input:

    out[n, h, a, w, b, g, :] += masks[n, g*k*k + tap, h*s + a, w*s + b]
                                * features[n, g*Cg:(g+1)*Cg, h*t + (i - r)*d, w*t + (j - r)*d]

The centers are every t-th input pixel (Hc = ceil(H / t)), so a tap's sources
are a strided slice of the input: stride t, starting (i - r)*d from the first.

Inputs in fp16/bf16 are accumulated in fp32 (fp64 stays fp64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import jit_dispatch
from .bands import alternating, row_bands, run_bands, workers_for


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def output_memory_format(features: torch.Tensor) -> torch.memory_format:
    """channels_last in, channels_last out; everything else gets contiguous."""
    if features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _channels_last(features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, H, W, C), contiguous, in the accumulation dtype."""
    return features.to(dtype).permute(0, 2, 3, 1).contiguous()


def _tap_ranges(offset: int, size: int, stride: int = 1) -> tuple[int, int]:
    """Centers [start, stop) whose tap at ``offset`` lands inside [0, size):
    center c reads input c*stride + offset, for c < ceil(size / stride).

    Taps outside the input are skipped rather than read as zero padding, so a
    mask or gradient of Inf/NaN there does not turn into NaN (Inf * 0).
    """
    centers = -(-size // stride)
    return max(0, -(offset // stride)), min(centers, (size - 1 - offset) // stride + 1)


def _source_slice(start: int, stop: int, offset: int, stride: int) -> slice:
    """The input rows (or columns) that centers [start, stop) read at ``offset``."""
    return slice(start * stride + offset, (stop - 1) * stride + offset + 1, stride)


def _masks_by_tap(
    masks: torch.Tensor, group_size: int, kernel_size: int, scale_factor: int, dtype: torch.dtype
) -> torch.Tensor:
    """masks (N, G*k*k, H*s, W*s) viewed as (N, H, s, W, s, G, k*k)."""
    taps = kernel_size * kernel_size
    batch, _, out_height, out_width = masks.shape
    height, width = out_height // scale_factor, out_width // scale_factor
    by_tap = masks.to(dtype).reshape(
        batch, group_size, taps, height, scale_factor, width, scale_factor
    )
    return by_tap.permute(0, 3, 4, 5, 6, 1, 2)


def cpu_forward(
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
    stride: int = 1,
    dilation: int = 1,
) -> torch.Tensor:
    params = (kernel_size, group_size, scale_factor, stride, dilation)
    if jit_dispatch.use_jit(features.device):  # the compiled kernels, where numba is
        out = jit_dispatch.forward(features, masks, params, output_memory_format(features))
        if out is not None:
            return out
    batch, channels, height, width = features.shape
    s, k, t, d = scale_factor, kernel_size, stride, dilation
    radius = (k - 1) // 2
    rows, cols = -(-height // t), -(-width // t)  # window centers
    acc = accumulation_dtype(features.dtype)
    features_cl = _channels_last(features, acc)
    mask_taps = _masks_by_tap(masks, group_size, k, s, acc)

    channels_per_group = channels // group_size
    out = torch.zeros(
        (batch, rows, s, cols, s, group_size, channels_per_group),
        dtype=acc,
        device=features.device,
    )

    def forward_band(band: tuple[int, int]) -> None:
        top, bottom = band
        for i in range(k):
            row_offset = (i - radius) * d
            h0, h1 = _tap_ranges(row_offset, height, t)
            h0, h1 = max(h0, top), min(h1, bottom)
            for j in range(k):
                col_offset = (j - radius) * d
                w0, w1 = _tap_ranges(col_offset, width, t)
                if h0 >= h1 or w0 >= w1:
                    continue
                source_rows = _source_slice(h0, h1, row_offset, t)
                source_cols = _source_slice(w0, w1, col_offset, t)
                window = features_cl[:, source_rows, source_cols].reshape(
                    batch, h1 - h0, 1, w1 - w0, 1, group_size, channels_per_group
                )
                weights = mask_taps[:, h0:h1, :, w0:w1, :, :, i * k + j, None]
                out[:, h0:h1, :, w0:w1].addcmul_(window, weights)

    bands = row_bands(rows, 1, batch * s * s * cols * channels)
    run_bands(forward_band, bands, workers_for(features.device, bands))

    out = out.view(batch, rows * s, cols * s, channels).permute(0, 3, 1, 2)
    return out.to(dtype=features.dtype, memory_format=output_memory_format(features))


def cpu_backward(
    grad_output: torch.Tensor,
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
    stride: int = 1,
    dilation: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_features, grad_masks), each shaped, typed and laid out like its input.

    Per window center and group, with W the (Cg, k*k) window of features it reads,
    M the (s*s, k*k) masks of its s*s outputs and G their (s*s, Cg) grad_output:
    grad_masks = G @ W and grad_window = M^T @ G. Done as batched matmuls over a
    band of rows at a time, so the unfolded windows never exceed a fixed budget.
    """
    params = (kernel_size, group_size, scale_factor, stride, dilation)
    if jit_dispatch.use_jit(features.device):  # the compiled kernels, where numba is
        grads = jit_dispatch.backward(grad_output, features, masks, params)
        if grads is not None:
            return grads
    batch, channels, height, width = features.shape
    s, k, t, d = scale_factor, kernel_size, stride, dilation
    radius = (k - 1) // 2
    reach = radius * d  # how far a window reaches from its center
    rows, cols = -(-height // t), -(-width // t)  # window centers
    taps = k * k
    acc = accumulation_dtype(features.dtype)
    channels_per_group = channels // group_size

    padded = F.pad(_channels_last(features, acc), (0, 0, reach, reach, reach, reach))
    span = 2 * reach + 1
    # (N, Hc, Wc, C, k, k), a view: windows t apart, taps d apart
    windows = padded.unfold(1, span, t).unfold(2, span, t)[..., ::d, ::d]
    # (N, Hc, Wc, G, s, s, k*k) and (N, Hc, Wc, G, s, s, Cg): grouped by window center
    masks_by_pixel = masks.to(acc).reshape(batch, group_size, taps, rows, s, cols, s)
    masks_by_pixel = masks_by_pixel.permute(0, 3, 5, 1, 4, 6, 2)
    grad_by_pixel = grad_output.to(acc).reshape(
        batch, group_size, channels_per_group, rows, s, cols, s
    )
    grad_by_pixel = grad_by_pixel.permute(0, 3, 5, 1, 4, 6, 2)
    # Taps outside the input read padding; their mask gradient is exactly zero
    # (not grad_output * 0, which is NaN where grad_output is infinite).
    outside = _taps_outside(height, width, k, features.device, t, d)

    grad_masks = torch.empty(
        (batch, group_size, taps, rows, s, cols, s), dtype=acc, device=features.device
    )
    grad_masks_by_pixel = grad_masks.permute(0, 3, 5, 1, 4, 6, 2)
    grad_padded = torch.zeros_like(padded)

    def backward_band(band: tuple[int, int]) -> None:
        top, bottom = band
        shape = (batch, bottom - top, cols, group_size)
        window = windows[:, top:bottom].reshape(*shape, channels_per_group, taps)
        weights = masks_by_pixel[:, top:bottom].reshape(*shape, s * s, taps)
        upstream = grad_by_pixel[:, top:bottom].reshape(*shape, s * s, channels_per_group)
        # bmm runs one small matmul at a time on odd strides (e.g. the stride-0
        # grad_output of out.sum()): hand it dense operands
        upstream = upstream.contiguous()

        band_grad_masks = torch.matmul(upstream, window).view(*shape, s, s, taps)
        band_outside = outside[top:bottom].view(1, bottom - top, cols, 1, 1, 1, taps)
        grad_masks_by_pixel[:, top:bottom] = band_grad_masks.masked_fill(band_outside, 0)

        grad_windows = torch.matmul(weights.transpose(-1, -2), upstream)  # (..., k*k, Cg)
        for i in range(k):
            for j in range(k):
                target_rows = _source_slice(top, bottom, i * d, t)
                target_cols = _source_slice(0, cols, j * d, t)
                grad_padded[:, target_rows, target_cols] += grad_windows[..., i * k + j, :].reshape(
                    batch, bottom - top, cols, channels
                )

    # A band's window gradients reach 2rd padded rows past its last center, t apart:
    # bands at least ceil(2rd / t) centers tall, run evens then odds, never write the
    # same rows at the same time, in a fixed order. The unfolded windows of a band
    # stay within about 4M elements.
    bands = row_bands(
        rows, -(-2 * reach // t), batch * cols * channels * taps, max_elements=1 << 22
    )
    workers = workers_for(features.device, bands)
    for phase in alternating(bands):  # the same summation order with any worker count
        run_bands(backward_band, phase, min(workers, len(phase)))

    grad_features = grad_padded[:, reach : reach + height, reach : reach + width, :]
    return (
        _like(grad_features.permute(0, 3, 1, 2), features),
        _like(grad_masks.view(masks.shape), masks),
    )


def _taps_outside(
    height: int,
    width: int,
    kernel_size: int,
    device: torch.device,
    stride: int = 1,
    dilation: int = 1,
) -> torch.Tensor:
    """(Hc, Wc, k*k) bool: tap (i, j) of window center (h, w) falls outside the input."""
    radius = (kernel_size - 1) // 2
    offsets = (torch.arange(kernel_size, device=device) - radius) * dilation
    rows = torch.arange(0, height, stride, device=device)[:, None] + offsets  # (Hc, k)
    cols = torch.arange(0, width, stride, device=device)[:, None] + offsets  # (Wc, k)
    row_outside = (rows < 0) | (rows >= height)
    col_outside = (cols < 0) | (cols >= width)
    outside = row_outside[:, None, :, None] | col_outside[None, :, None, :]  # (Hc, Wc, k, k)
    return outside.reshape(len(rows), len(cols), kernel_size * kernel_size)


def _like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Copy into a tensor with the reference's dtype and (dense) strides."""
    result = torch.empty_like(reference)
    result.copy_(value)
    return result
