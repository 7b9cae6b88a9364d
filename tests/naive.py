"""An independent, deliberately naive CARAFE in float64 (loops over pixels and taps)."""

from __future__ import annotations

import numpy as np


def naive_carafe(features, masks, kernel_size, group_size, scale_factor):
    """out[n, c, y, x] = sum_ij masks[n, g*k*k + i*k + j, y, x] * f[n, c, y//s+i-r, x//s+j-r]."""
    features = np.asarray(features, dtype=np.float64)
    masks = np.asarray(masks, dtype=np.float64)
    n, c, h, w = features.shape
    k, s = kernel_size, scale_factor
    r = (k - 1) // 2
    per_group = c // group_size
    out = np.zeros((n, c, h * s, w * s))
    for channel in range(c):
        g = channel // per_group
        for y in range(h * s):
            for x in range(w * s):
                total = np.zeros(n)
                for i in range(k):
                    for j in range(k):
                        fy, fx = y // s + i - r, x // s + j - r
                        if 0 <= fy < h and 0 <= fx < w:
                            weight = masks[:, g * k * k + i * k + j, y, x]
                            total += weight * features[:, channel, fy, fx]
                out[:, channel, y, x] = total
    return out


def naive_carafe_backward(grad_output, features, masks, kernel_size, group_size, scale_factor):
    """(grad_features, grad_masks) by scattering each output's gradient to what it read."""
    grad_output = np.asarray(grad_output, dtype=np.float64)
    features = np.asarray(features, dtype=np.float64)
    masks = np.asarray(masks, dtype=np.float64)
    n, c, h, w = features.shape
    k, s = kernel_size, scale_factor
    r = (k - 1) // 2
    per_group = c // group_size
    grad_features = np.zeros_like(features)
    grad_masks = np.zeros_like(masks)
    for channel in range(c):
        g = channel // per_group
        for y in range(h * s):
            for x in range(w * s):
                upstream = grad_output[:, channel, y, x]
                for i in range(k):
                    for j in range(k):
                        fy, fx = y // s + i - r, x // s + j - r
                        if 0 <= fy < h and 0 <= fx < w:
                            m = g * k * k + i * k + j
                            grad_features[:, channel, fy, fx] += upstream * masks[:, m, y, x]
                            grad_masks[:, m, y, x] += upstream * features[:, channel, fy, fx]
    return grad_features, grad_masks
