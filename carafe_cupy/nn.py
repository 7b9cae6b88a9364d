"""torch.nn modules over :func:`carafe_cupy.carafe`.

They script with ``torch.jit.script``: scripted code calls the registered ops
(``torch.ops.carafe_cupy.*``), which check their arguments and choose the
kernels or the PyTorch path themselves.
"""

from __future__ import annotations

import torch
from torch import nn

from ._torch_fused import carafe_from_logits
from ._torch_ops import carafe, normalize_logits, uses_kernels
from ._validate import check_params


def scripted_carafe(
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> torch.Tensor:
    """:func:`carafe` as TorchScript sees it: type promotion, then the op."""
    dtype = torch.promote_types(features.dtype, masks.dtype)
    return torch.ops.carafe_cupy.carafe_forward(
        features.to(dtype), masks.to(dtype), kernel_size, group_size, scale_factor
    )


def scripted_carafe_from_logits(
    features: torch.Tensor,
    logits: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> torch.Tensor:
    dtype = torch.promote_types(features.dtype, logits.dtype)
    return torch.ops.carafe_cupy.carafe_fused_forward(
        features.to(dtype), logits.to(dtype), kernel_size, group_size, scale_factor
    )


class CARAFE(nn.Module):
    """``CARAFE(kernel_size, group_size, scale_factor)(features, masks)``."""

    def __init__(self, kernel_size: int, group_size: int, scale_factor: int) -> None:
        super().__init__()
        self.kernel_size, self.group_size, self.scale_factor = check_params(
            kernel_size, group_size, scale_factor
        )

    def forward(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return scripted_carafe(
                features, masks, self.kernel_size, self.group_size, self.scale_factor
            )
        return self._carafe(features, masks)

    @torch.jit.unused
    def _carafe(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return carafe(features, masks, self.kernel_size, self.group_size, self.scale_factor)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, group_size={self.group_size}, "
            f"scale_factor={self.scale_factor}"
        )


class CARAFENaive(CARAFE):
    """mmcv's name for the reference implementation: the same op and results here."""


class CARAFEPack(nn.Module):
    """The complete CARAFE upsampler, layer for layer as mmcv's ``CARAFEPack``.

    A 1x1 channel compressor and a content encoder predict k*k*G*s*s logits per
    input pixel; pixel_shuffle spreads them over the s*s sub-pixels and a softmax
    over each group's k*k taps normalises them; :func:`carafe` reassembles.
    Submodule names match mmcv's, so its state_dicts load with ``strict=True``.
    """

    def __init__(
        self,
        channels: int,
        scale_factor: int,
        up_kernel: int = 5,
        up_group: int = 1,
        encoder_kernel: int = 3,
        encoder_dilation: int = 1,
        compressed_channels: int = 64,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.up_kernel, self.up_group, self.scale_factor = check_params(
            up_kernel, up_group, scale_factor
        )
        self.encoder_kernel = encoder_kernel
        self.encoder_dilation = encoder_dilation
        self.compressed_channels = compressed_channels
        self.channel_compressor = nn.Conv2d(channels, compressed_channels, 1)
        self.content_encoder = nn.Conv2d(
            compressed_channels,
            up_kernel * up_kernel * up_group * scale_factor * scale_factor,
            encoder_kernel,
            padding=(encoder_kernel - 1) * encoder_dilation // 2,
            dilation=encoder_dilation,
        )
        # Not a constructor argument, so the signature stays mmcv's; set it to False
        # to run pixel_shuffle + softmax + carafe as separate ops (e.g. to compare).
        self.fuse_normalizer = True
        self.init_weights()

    def init_weights(self) -> None:
        from .mmcv_compat import normal_init, xavier_init

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                xavier_init(module, distribution="uniform")
        normal_init(self.content_encoder, std=0.001)

    def kernel_normalizer(self, mask: torch.Tensor) -> torch.Tensor:
        return normalize_logits(mask, self.up_kernel, self.scale_factor)

    def feature_reassemble(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return scripted_carafe(x, mask, self.up_kernel, self.up_group, self.scale_factor)
        return self._carafe(x, mask)

    @torch.jit.unused
    def _carafe(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return carafe(x, mask, self.up_kernel, self.up_group, self.scale_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.content_encoder(self.channel_compressor(x))
        if torch.jit.is_scripting():
            if self.fuse_normalizer:
                # the op composes pixel_shuffle + softmax + carafe where it has no kernels
                return scripted_carafe_from_logits(
                    x, mask, self.up_kernel, self.up_group, self.scale_factor
                )
        elif self.fuse_normalizer and uses_kernels(x.device):
            # pixel_shuffle + softmax inside the kernels: masks never stored
            return carafe_from_logits(x, mask, self.up_kernel, self.up_group, self.scale_factor)
        mask = self.kernel_normalizer(mask)
        return self.feature_reassemble(x, mask)
