"""torch.nn modules over :func:`carafe_cupy.carafe`.

They script with ``torch.jit.script``: scripted code calls the registered ops
(``torch.ops.carafe_cupy.*``), which check their arguments and choose the
kernels or the PyTorch path themselves.
"""

from __future__ import annotations

import torch
from torch import nn

from ._core import limits as _limits
from ._core.validate import check_int, check_odd, check_params
from ._cpu.path import device_label, device_memory_bytes
from ._torch.common import uses_kernels
from ._torch.functional import carafe, normalize_logits
from ._torch.fused import carafe_from_logits


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


def check_weights_fit(where: str, weights: list[tuple[str, str, int]], arguments: str) -> None:
    """Refuse, before any is allocated, parameters that would need more than all the
    memory of torch's default device. ``weights``: (which, formula, count) per tensor;
    ``arguments``: the constructor arguments that set their sizes."""
    dtype = torch.get_default_dtype()
    device = torch.get_default_device()
    parts = [
        (
            f"{which}, {formula} = {count} {str(dtype).replace('torch.', '')} values,",
            count * dtype.itemsize,
        )
        for which, formula, count in weights
    ]
    capacity = device_memory_bytes(device)
    _limits.check_fits(where, parts, capacity, device_label(device), f"lower {arguments}")


class CARAFE(nn.Module):
    """``CARAFE(kernel_size, group_size, scale_factor)(features, masks)``: :func:`carafe`
    as a module, for masks you compute yourself (see :class:`CARAFEPack` for the whole
    upsampler with its mask predictor). It has no parameters.

    Args:
        kernel_size: k, the odd side of the reassembly window (int >= 1).
        group_size: G, the number of mask groups; must divide the feature channels.
        scale_factor: s, the integer upsampling factor (int >= 1; floats are refused).

    ``forward(features, masks)`` takes features (N, C, H, W) and masks
    (N, G*k*k, H*s, W*s) and returns (N, C, H*s, W*s); see :func:`carafe`.
    """

    def __init__(self, kernel_size: int, group_size: int, scale_factor: int) -> None:
        super().__init__()
        self.kernel_size, self.group_size, self.scale_factor = check_params(
            kernel_size, group_size, scale_factor, where="CARAFE"
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


def _mmcv_group(up_group: object, where: str) -> object:
    """mmcv's CARAFEPack multiplies ``up_group`` into the encoder's channel count and
    passes it to the op as an int, so ``True`` means one group there: take it so here.
    ``False`` (no groups at all) fails there, and is refused here."""
    if up_group is True:
        return 1
    if up_group is False:
        raise ValueError(
            f"{where}: up_group must be >= 1 (True counts as 1, as in mmcv), got False"
        )
    return up_group


class CARAFEPack(nn.Module):
    """The complete CARAFE upsampler, layer for layer as mmcv's ``CARAFEPack``.

    A 1x1 channel compressor and a content encoder predict k*k*G*s*s logits per
    input pixel; pixel_shuffle spreads them over the s*s sub-pixels and a softmax
    over each group's k*k taps normalises them; :func:`carafe` reassembles.
    Submodule names match mmcv's, so its state_dicts load with ``strict=True``.

    Args:
        channels: C, channels of the input features (and of the output).
        scale_factor: s, the integer upsampling factor: (N, C, H, W) -> (N, C, H*s, W*s).
        up_kernel: k, odd side of the window each output pixel reassembles (default 5).
        up_group: G, mask groups; channel c uses group c // (C // G). Must divide channels.
            ``True`` counts as 1, as in mmcv.
        encoder_kernel: odd kernel size of the content encoder convolution (default 3).
        encoder_dilation: dilation of the content encoder convolution (default 1).
        compressed_channels: output channels of the 1x1 channel compressor (default 64).

    Input (N, C, H, W) in float32, float64, float16 or bfloat16; output (N, C, H*s, W*s)
    of the same dtype. Set ``fuse_normalizer = False`` to run pixel_shuffle, softmax and
    :func:`carafe` as separate ops where the fused kernels would be used.
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
        where = "CARAFEPack"
        self.channels = check_int("channels", channels, 1, where)
        up_group = _mmcv_group(up_group, where)
        self.up_kernel, self.up_group, self.scale_factor = check_params(
            up_kernel,
            up_group,
            scale_factor,
            where,
            names=("up_kernel", "up_group", "scale_factor"),
        )
        if channels % self.up_group:
            raise ValueError(f"{where}: up_group ({up_group}) must divide channels ({channels})")
        self.encoder_kernel = encoder_kernel = check_odd("encoder_kernel", encoder_kernel, where)
        self.encoder_dilation = encoder_dilation = check_int(
            "encoder_dilation", encoder_dilation, 1, where
        )
        self.compressed_channels = compressed_channels = check_int(
            "compressed_channels", compressed_channels, 1, where
        )
        up_kernel, up_group, scale_factor = self.up_kernel, self.up_group, self.scale_factor
        encoded = up_kernel * up_kernel * up_group * scale_factor * scale_factor
        check_weights_fit(
            where,
            [
                (
                    "the channel compressor's weight",
                    "channels*compressed_channels",
                    channels * compressed_channels,
                ),
                (
                    "the content encoder's weight",
                    "compressed_channels*up_kernel**2*up_group*scale_factor**2"
                    f"*encoder_kernel**2 = {compressed_channels}*{up_kernel}**2*{up_group}"
                    f"*{scale_factor}**2*{encoder_kernel}**2",
                    compressed_channels * encoded * encoder_kernel**2,
                ),
            ],
            "scale_factor, up_kernel, up_group, compressed_channels or encoder_kernel",
        )
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
