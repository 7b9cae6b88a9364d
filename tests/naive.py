"""An independent, deliberately naive reassembly in float64 (loops over pixels and taps).

CARAFE is stride t = 1 and dilation d = 1; the output is ceil(H/t)*s x ceil(W/t)*s.
"""

from __future__ import annotations

import numpy as np


def _output_size(size: int, scale_factor: int, stride: int) -> int:
    return -(-size // stride) * scale_factor


def naive_carafe(features, masks, kernel_size, group_size, scale_factor, stride=1, dilation=1):
    """out[n, c, y, x] = sum_ij masks[n, g*k*k + i*k + j, y, x]
    * f[n, c, (y//s)*t + (i-r)*d, (x//s)*t + (j-r)*d]."""
    features = np.asarray(features, dtype=np.float64)
    masks = np.asarray(masks, dtype=np.float64)
    n, c, h, w = features.shape
    k, s, t, d = kernel_size, scale_factor, stride, dilation
    r = (k - 1) // 2
    per_group = c // group_size
    out_h, out_w = _output_size(h, s, t), _output_size(w, s, t)
    out = np.zeros((n, c, out_h, out_w))
    for channel in range(c):
        g = channel // per_group
        for y in range(out_h):
            for x in range(out_w):
                total = np.zeros(n)
                for i in range(k):
                    for j in range(k):
                        fy, fx = (y // s) * t + (i - r) * d, (x // s) * t + (j - r) * d
                        if 0 <= fy < h and 0 <= fx < w:
                            weight = masks[:, g * k * k + i * k + j, y, x]
                            total += weight * features[:, channel, fy, fx]
                out[:, channel, y, x] = total
    return out


def naive_carafe_backward(
    grad_output, features, masks, kernel_size, group_size, scale_factor, stride=1, dilation=1
):
    """(grad_features, grad_masks) by scattering each output's gradient to what it read."""
    grad_output = np.asarray(grad_output, dtype=np.float64)
    features = np.asarray(features, dtype=np.float64)
    masks = np.asarray(masks, dtype=np.float64)
    n, c, h, w = features.shape
    k, s, t, d = kernel_size, scale_factor, stride, dilation
    r = (k - 1) // 2
    per_group = c // group_size
    grad_features = np.zeros_like(features)
    grad_masks = np.zeros_like(masks)
    for channel in range(c):
        g = channel // per_group
        for y in range(_output_size(h, s, t)):
            for x in range(_output_size(w, s, t)):
                upstream = grad_output[:, channel, y, x]
                for i in range(k):
                    for j in range(k):
                        fy, fx = (y // s) * t + (i - r) * d, (x // s) * t + (j - r) * d
                        if 0 <= fy < h and 0 <= fx < w:
                            m = g * k * k + i * k + j
                            grad_features[:, channel, fy, fx] += upstream * masks[:, m, y, x]
                            grad_masks[:, m, y, x] += upstream * features[:, channel, fy, fx]
    return grad_features, grad_masks
