"""Reference CARAFE implementations the benchmark compares against.

All functions share the signature of ``carafe_cupy.carafe``::

    f(features, masks, kernel_size, group_size, scale_factor) -> output

with ``features`` (N, C, H, W), ``masks`` (N, G*k*k, H*s, W*s) and output (N, C, H*s, W*s).
Channel ``c`` uses group ``c // (C // G)``; mask channel ``g*k*k + i*k + j`` is kernel row ``i``,
column ``j``; taps outside the input are zero and masks are not renormalised.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch
import torch.nn.functional as F

CarafeFn = Callable[[torch.Tensor, torch.Tensor, int, int, int], torch.Tensor]


def _check(features: torch.Tensor, masks: torch.Tensor, k: int, g: int, s: int) -> None:
    n, c, h, w = features.shape
    if k % 2 != 1 or k < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {k}")
    if g < 1 or c % g != 0:
        raise ValueError(f"channels ({c}) must be divisible by group_size ({g})")
    want = (n, g * k * k, h * s, w * s)
    if tuple(masks.shape) != want:
        raise ValueError(f"masks must have shape {want}, got {tuple(masks.shape)}")


def carafe_unfold_upsampled(
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> torch.Tensor:
    """Unfold port, upsample first: nearest upsample, dilated ``F.unfold``, einsum with masks.

    Dilation ``s`` on the upsampled map makes tap (i, j) of output pixel (y, x) land on input
    pixel (y//s + i - r, x//s + j - r), and padding ``r*s`` supplies the zero border. It
    materialises a (N, C*k*k, Ho*Wo) column tensor, which is why it is slow and memory hungry.
    """
    k, g, s = kernel_size, group_size, scale_factor
    _check(features, masks, k, g, s)
    n, c, h, w = features.shape
    r = (k - 1) // 2
    ho, wo = h * s, w * s
    up = F.interpolate(features, scale_factor=s, mode="nearest")
    cols = F.unfold(up, kernel_size=k, dilation=s, padding=r * s)
    cols = cols.view(n, g, c // g, k * k, ho, wo)
    m = masks.view(n, g, k * k, ho, wo)
    out = torch.einsum("ngckhw,ngkhw->ngchw", cols, m)
    return out.reshape(n, c, ho, wo)


def carafe_unfold_lowres(
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> torch.Tensor:
    """Unfold port, unfold first: ``F.unfold`` at input resolution, the columns repeated
    to the output size, multiplied by the masks and summed over the k*k taps.

    Its column tensor is (N, C*k*k, H*W) before the repeat, so the unfold itself is s*s
    times smaller than in :func:`carafe_unfold_upsampled`; the product is still
    (N, C, k*k, Ho, Wo).
    """
    k, g, s = kernel_size, group_size, scale_factor
    _check(features, masks, k, g, s)
    n, c, h, w = features.shape
    r = (k - 1) // 2
    cols = F.unfold(features, kernel_size=k, padding=r).view(n, g, c // g, k * k, h, w)
    cols = cols.repeat_interleave(s, dim=4).repeat_interleave(s, dim=5)
    m = masks.view(n, g, 1, k * k, h * s, w * s)
    return (cols * m).sum(dim=3).reshape(n, c, h * s, w * s)


def carafe_shift(
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> torch.Tensor:
    """Shift-and-accumulate: one fused multiply-add per kernel tap, no column tensor.

    The output is viewed as (N, G, C/G, H, s, W, s) so the low-resolution window broadcasts
    over the s*s sub-pixels without being materialised (no repeat_interleave copy).
    """
    k, g, s = kernel_size, group_size, scale_factor
    _check(features, masks, k, g, s)
    n, c, h, w = features.shape
    r = (k - 1) // 2
    cg = c // g
    padded = F.pad(features, (r, r, r, r))
    m = masks.view(n, g, k * k, h, s, w, s)
    out = features.new_zeros(n, g, cg, h, s, w, s)
    for i in range(k):
        for j in range(k):
            win = padded[:, :, i : i + h, j : j + w].reshape(n, g, cg, h, 1, w, 1)
            out.addcmul_(m[:, :, i * k + j].unsqueeze(2), win)
    return out.view(n, c, h * s, w * s)


def reassemble_unfold(
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int,
    group_size: int,
    stride: int = 1,
    dilation: int = 1,
) -> torch.Tensor:
    """Strided reassembly as the involution authors and YOLO ports write it: ``F.unfold``
    with that stride, dilation and padding (k-1)*d/2, the columns viewed as
    (N, G, C/G, k*k, Ho, Wo) and summed against the kernels viewed as (N, G, 1, k*k, Ho, Wo).

    ``kernels`` is (N, G*k*k, ceil(H/stride), ceil(W/stride)). The column tensor holds k*k
    copies of the (strided) input, the memory cost the fused kernels avoid.
    """
    k, g = kernel_size, group_size
    n, c, h, w = features.shape
    ho, wo = -(-h // stride), -(-w // stride)
    if c % g or tuple(kernels.shape) != (n, g * k * k, ho, wo):
        raise ValueError(
            f"kernels must have shape {(n, g * k * k, ho, wo)} for features {tuple(features.shape)}"
            f" and group_size {g} dividing C; got {tuple(kernels.shape)}"
        )
    cols = F.unfold(
        features, k, dilation=dilation, padding=dilation * (k - 1) // 2, stride=stride
    ).view(n, g, c // g, k * k, ho, wo)
    return (kernels.view(n, g, 1, k * k, ho, wo) * cols).sum(dim=3).view(n, c, ho, wo)


def _mmcv() -> CarafeFn:
    from mmcv.ops import carafe

    return carafe


def _authors() -> CarafeFn:
    # The authors' repository installs a CUDA extension ``carafe_ext`` plus a Python wrapper
    # package; its import name changed between releases, so try both.
    importlib.import_module("carafe_ext")
    last: Exception | None = None
    for mod in ("carafe_op", "carafe"):
        try:
            return importlib.import_module(mod).carafe
        except (ImportError, AttributeError) as exc:
            last = exc
    raise ImportError(f"carafe_ext found but no Python wrapper: {last}")


def optional_baselines() -> dict[str, CarafeFn | str]:
    """Third-party CUDA implementations: a callable if importable, else a skip note."""
    found: dict[str, CarafeFn | str] = {}
    for name, loader in (("mmcv", _mmcv), ("carafe_ext", _authors)):
        try:
            found[name] = loader()
        except Exception as exc:  # any failure means "not available"
            found[name] = f"not importable ({type(exc).__name__}: {exc})"
    return found


BASELINES: dict[str, CarafeFn] = {
    "unfold_lowres": carafe_unfold_lowres,
    "unfold_upsampled": carafe_unfold_upsampled,
    "shift": carafe_shift,
}
