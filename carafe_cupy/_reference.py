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
    for i in range(k):
        h0, h1 = _tap_ranges(i - radius, height)
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
    """(grad_features, grad_masks), each shaped, typed and laid out like its input."""
    batch, channels, height, width = features.shape
    s, k = scale_factor, kernel_size
    radius = (k - 1) // 2
    taps = k * k
    acc = accumulation_dtype(features.dtype)
    channels_per_group = channels // group_size

    features_cl = _channels_last(features, acc)
    mask_taps = _masks_by_tap(masks, group_size, k, s, acc)
    # grad_output as one (s*s, Cg) matrix per (n, h, w, g), made contiguous once
    grad_tiles = (
        grad_output.to(acc)
        .reshape(batch, group_size, channels_per_group, height, s, width, s)
        .permute(0, 3, 5, 1, 4, 6, 2)
        .reshape(batch, height, width, group_size, s * s, channels_per_group)
    )

    grad_features_cl = torch.zeros_like(features_cl)
    # taps outside the input stay zero
    grad_mask_taps = torch.zeros(
        (batch, height, s, width, s, group_size, taps), dtype=acc, device=features.device
    )
    for i in range(k):
        h0, h1 = _tap_ranges(i - radius, height)
        for j in range(k):
            w0, w1 = _tap_ranges(j - radius, width)
            if h0 >= h1 or w0 >= w1:
                continue
            tap = i * k + j
            pixels = (batch, h1 - h0, w1 - w0, group_size)
            source_rows = slice(h0 + i - radius, h1 + i - radius)
            source_cols = slice(w0 + j - radius, w1 + j - radius)
            tiles = grad_tiles[:, h0:h1, w0:w1]
            window = features_cl[:, source_rows, source_cols]
            window = window.reshape(*pixels, channels_per_group, 1)
            # d out / d mask: dot product over the group's channels
            grad_mask_tap = torch.matmul(tiles, window).view(*pixels, s, s)
            grad_mask_taps[:, h0:h1, :, w0:w1, :, :, tap] = grad_mask_tap.permute(0, 1, 4, 2, 5, 3)
            # d out / d features: mask-weighted sum over the tap's s*s outputs
            weights = mask_taps[:, h0:h1, :, w0:w1, :, :, tap]
            weights = weights.permute(0, 1, 3, 5, 2, 4).reshape(*pixels, 1, s * s)
            grad_window = torch.matmul(weights, tiles).view(*pixels[:3], channels)
            grad_features_cl[:, source_rows, source_cols] += grad_window

    grad_features = grad_features_cl.permute(0, 3, 1, 2)
    grad_masks = grad_mask_taps.permute(0, 5, 6, 1, 2, 3, 4).reshape(masks.shape)
    return (
        _like(grad_features, features),
        _like(grad_masks, masks),
    )


def _like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Copy into a tensor with the reference's dtype and (dense) strides."""
    result = torch.empty_like(reference)
    result.copy_(value)
    return result
