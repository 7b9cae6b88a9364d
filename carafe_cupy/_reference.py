"""The pure-PyTorch CARAFE: any device, memory O(output).

Work happens in a channels-last view, where an output tile (N, H, s, W, s, G, Cg)
and the input window (N, H, 1, W, 1, G, Cg) line up, so each of the k*k taps is
one broadcast multiply-add over contiguous channels, restricted to the centers
whose tap lies inside the input:

    out[n, h, a, w, b, g, :] += masks[n, g*k*k + tap, h*s + a, w*s + b]
                                * features[n, g*Cg:(g+1)*Cg, h + i - r, w + j - r]

Inputs in fp16/bf16 are accumulated in fp32 (fp64 stays fp64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._cpu_bands import alternating, row_bands, run_bands, workers_for


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


def _tap_ranges(offset: int, size: int) -> tuple[int, int]:
    """Centers [start, stop) whose tap at ``offset`` lands inside [0, size).

    Taps outside the input are skipped rather than read as zero padding, so a
    mask or gradient of Inf/NaN there does not turn into NaN (Inf * 0).
    """
    return max(0, -offset), min(size, size - offset)


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


def carafe_forward(
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> torch.Tensor:
    batch, channels, height, width = features.shape
    s, k = scale_factor, kernel_size
    radius = (k - 1) // 2
    acc = accumulation_dtype(features.dtype)
    features_cl = _channels_last(features, acc)
    mask_taps = _masks_by_tap(masks, group_size, k, s, acc)

    channels_per_group = channels // group_size
    out = torch.zeros(
        (batch, height, s, width, s, group_size, channels_per_group),
        dtype=acc,
        device=features.device,
    )

    def forward_band(band: tuple[int, int]) -> None:
        top, bottom = band
        for i in range(k):
            h0, h1 = _tap_ranges(i - radius, height)
            h0, h1 = max(h0, top), min(h1, bottom)
            for j in range(k):
                w0, w1 = _tap_ranges(j - radius, width)
                if h0 >= h1 or w0 >= w1:
                    continue
                source_rows = slice(h0 + i - radius, h1 + i - radius)
                source_cols = slice(w0 + j - radius, w1 + j - radius)
                window = features_cl[:, source_rows, source_cols].reshape(
                    batch, h1 - h0, 1, w1 - w0, 1, group_size, channels_per_group
                )
                weights = mask_taps[:, h0:h1, :, w0:w1, :, :, i * k + j, None]
                out[:, h0:h1, :, w0:w1].addcmul_(window, weights)

    bands = row_bands(height, 1, batch * s * s * width * channels)
    run_bands(forward_band, bands, workers_for(features.device, bands))

    out = out.view(batch, height * s, width * s, channels).permute(0, 3, 1, 2)
    return out.to(dtype=features.dtype, memory_format=output_memory_format(features))


def carafe_backward(
    grad_output: torch.Tensor,
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_features, grad_masks), each shaped, typed and laid out like its input.

    Per input pixel and group, with W the (Cg, k*k) window of features around it,
    M the (s*s, k*k) masks of its s*s outputs and G their (s*s, Cg) grad_output:
    grad_masks = G @ W and grad_window = M^T @ G. Done as batched matmuls over a
    band of rows at a time, so the unfolded windows never exceed a fixed budget.
    """
    batch, channels, height, width = features.shape
    s, k = scale_factor, kernel_size
    radius = (k - 1) // 2
    taps = k * k
    acc = accumulation_dtype(features.dtype)
    channels_per_group = channels // group_size

    padded = F.pad(_channels_last(features, acc), (0, 0, radius, radius, radius, radius))
    windows = padded.unfold(1, k, 1).unfold(2, k, 1)  # (N, H, W, C, k, k), a view
    # (N, H, W, G, s, s, k*k) and (N, H, W, G, s, s, Cg): grouped by source pixel
    masks_by_pixel = masks.to(acc).reshape(batch, group_size, taps, height, s, width, s)
    masks_by_pixel = masks_by_pixel.permute(0, 3, 5, 1, 4, 6, 2)
    grad_by_pixel = grad_output.to(acc).reshape(
        batch, group_size, channels_per_group, height, s, width, s
    )
    grad_by_pixel = grad_by_pixel.permute(0, 3, 5, 1, 4, 6, 2)
    # Taps outside the input read padding; their mask gradient is exactly zero
    # (not grad_output * 0, which is NaN where grad_output is infinite).
    outside = _taps_outside(height, width, k, features.device)

    grad_masks = torch.empty(
        (batch, group_size, taps, height, s, width, s), dtype=acc, device=features.device
    )
    grad_masks_by_pixel = grad_masks.permute(0, 3, 5, 1, 4, 6, 2)
    grad_padded = torch.zeros_like(padded)

    def backward_band(band: tuple[int, int]) -> None:
        top, bottom = band
        shape = (batch, bottom - top, width, group_size)
        window = windows[:, top:bottom].reshape(*shape, channels_per_group, taps)
        weights = masks_by_pixel[:, top:bottom].reshape(*shape, s * s, taps)
        upstream = grad_by_pixel[:, top:bottom].reshape(*shape, s * s, channels_per_group)
        # bmm runs one small matmul at a time on odd strides (e.g. the stride-0
        # grad_output of out.sum()): hand it dense operands
        upstream = upstream.contiguous()

        band_grad_masks = torch.matmul(upstream, window).view(*shape, s, s, taps)
        band_outside = outside[top:bottom].view(1, bottom - top, width, 1, 1, 1, taps)
        grad_masks_by_pixel[:, top:bottom] = band_grad_masks.masked_fill(band_outside, 0)

        grad_windows = torch.matmul(weights.transpose(-1, -2), upstream)  # (..., k*k, Cg)
        for i in range(k):
            for j in range(k):
                grad_padded[:, top + i : bottom + i, j : j + width] += grad_windows[
                    ..., i * k + j, :
                ].reshape(batch, bottom - top, width, channels)

    # A band's window gradients reach 2r rows past it: bands at least 2r tall, run
    # evens then odds, never write the same rows at the same time, in a fixed order.
    # The unfolded windows of a band stay within about 4M elements.
    bands = row_bands(height, 2 * radius, batch * width * channels * taps, max_elements=1 << 22)
    workers = workers_for(features.device, bands)
    for phase in alternating(bands):  # the same summation order with any worker count
        run_bands(backward_band, phase, min(workers, len(phase)))

    grad_features = grad_padded[:, radius : radius + height, radius : radius + width, :]
    return (
        _like(grad_features.permute(0, 3, 1, 2), features),
        _like(grad_masks.view(masks.shape), masks),
    )


def _taps_outside(height: int, width: int, kernel_size: int, device: torch.device) -> torch.Tensor:
    """(H, W, k*k) bool: tap (i, j) of pixel (h, w) falls outside the input."""
    radius = (kernel_size - 1) // 2
    offsets = torch.arange(kernel_size, device=device) - radius
    rows = torch.arange(height, device=device)[:, None] + offsets  # (H, k)
    cols = torch.arange(width, device=device)[:, None] + offsets  # (W, k)
    row_outside = (rows < 0) | (rows >= height)
    col_outside = (cols < 0) | (cols >= width)
    outside = row_outside[:, None, :, None] | col_outside[None, :, None, :]  # (H, W, k, k)
    return outside.reshape(height, width, kernel_size * kernel_size)


def _like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Copy into a tensor with the reference's dtype and (dense) strides."""
    result = torch.empty_like(reference)
    result.copy_(value)
    return result
