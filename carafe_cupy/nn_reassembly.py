"""torch.nn modules over :func:`carafe_cupy.reassemble` beyond upsampling: involution
(Li et al., CVPR 2021) and CARAFE++'s content-aware downsampler (Wang et al., TPAMI 2021)."""

from __future__ import annotations

import torch
from torch import nn

from ._core.validate import check_int, check_odd
from ._torch.functional import normalize_logits, reassemble
from .nn import check_weights_fit


def scripted_reassemble(
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int,
    group_size: int,
    stride: int,
    dilation: int,
) -> torch.Tensor:
    """:func:`reassemble` as TorchScript sees it: type promotion, then the registered op
    (which checks its arguments itself)."""
    dtype = torch.promote_types(features.dtype, kernels.dtype)
    return torch.ops.carafe_cupy.carafe_forward(
        features.to(dtype), kernels.to(dtype), kernel_size, group_size, 1, stride, dilation
    )


class _StridedReassembly(nn.Module):
    """What both modules share: ``kernels(x)``, then :func:`reassemble` with their window."""

    def window(self) -> tuple[int, int, int, int]:
        """(kernel_size, groups, stride, dilation): the window :func:`reassemble` uses."""
        raise NotImplementedError

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels = self.kernels(x)
        kernel_size, groups, stride, dilation = self.window()
        if torch.jit.is_scripting():
            return scripted_reassemble(x, kernels, kernel_size, groups, stride, dilation)
        return self._reassemble(x, kernels, kernel_size, groups, stride, dilation)

    @torch.jit.unused
    def _reassemble(
        self,
        x: torch.Tensor,
        kernels: torch.Tensor,
        kernel_size: int,
        groups: int,
        stride: int,
        dilation: int,
    ) -> torch.Tensor:
        return reassemble(x, kernels, kernel_size, groups, stride=stride, dilation=dilation)


def _check_divides(where: str, name: str, value: int, channels: int) -> None:
    if channels % value:
        raise ValueError(f"{where}: {name} ({value}) must divide channels ({channels})")


class ConvModule1x1(nn.Module):
    """A 1x1 convolution, then optionally BatchNorm and ReLU, with the submodule names of
    mmcv's ``ConvModule`` (``conv``, ``bn``, ``activate``) so its checkpoints load.

    As ``ConvModule``'s ``bias='auto'``: the convolution has a bias only without BatchNorm.
    Weights start as ``ConvModule.init_weights`` sets them: Kaiming normal (fan_out, ReLU
    gain), zero bias; BatchNorm weight 1, bias 0.
    """

    def __init__(self, in_channels: int, out_channels: int, norm_and_relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=not norm_and_relu)
        # Identity has no state, so the state_dict keys are ConvModule's either way.
        self.bn: nn.Module = nn.BatchNorm2d(out_channels) if norm_and_relu else nn.Identity()
        self.activate: nn.Module = nn.ReLU(inplace=True) if norm_and_relu else nn.Identity()
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class Involution(_StridedReassembly):
    """Involution (Li et al., "Involution: Inverting the Inherence of Convolution for
    Visual Recognition", CVPR 2021): the operator of RedNet, run by :func:`reassemble`.

    Every output pixel gets its own k*k kernel per group of ``group_channels`` channels,
    generated from the input at that pixel: average pooling (only when ``stride > 1``),
    a 1x1 reduction to ``channels // reduction_ratio`` channels with BatchNorm and ReLU
    (``conv1``), and a 1x1 span to G*k*k channels with a bias (``conv2``), G =
    ``channels // group_channels``. The kernels then reassemble the k*k neighbourhood
    (zero padding (k-1)*d/2) of input pixel (y*stride, x*stride), channel group by group.

    Submodules are named as in the authors' RedNet code (``conv1.conv``, ``conv1.bn``,
    ``conv2.conv``), so the involution layers of their checkpoints load with
    ``strict=True``; pooling and ReLU hold no state.

    Output size: (N, C, ceil(H/stride), ceil(W/stride)), the size of the authors'
    unfold and CUDA formulations (padding (k-1)/2). Their kernel branch pools with
    floor rounding and so breaks when H or W is not a multiple of the stride; here the
    pooling rounds up (``ceil_mode=True``: the last window averages the rows and columns
    it covers), which matches the authors' module wherever it runs and gives one kernel
    per output pixel everywhere else.

    Args:
        channels: C, input and output channels.
        kernel_size: k, odd side of each pixel's kernel (RedNet uses 7).
        stride: t, the output keeps every t-th pixel of each row and column.
        group_channels: channels that share a kernel; must divide ``channels``.
        reduction_ratio: the reduction conv keeps ``channels // reduction_ratio``
            channels (at least one).
        dilation: d, spacing of the kernel taps (the authors' detection code's option).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        stride: int = 1,
        group_channels: int = 16,
        reduction_ratio: int = 4,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        where = "Involution"
        self.channels = channels = check_int("channels", channels, 1, where)
        self.kernel_size = kernel_size = check_odd("kernel_size", kernel_size, where)
        self.stride = stride = check_int("stride", stride, 1, where)
        self.group_channels = check_int("group_channels", group_channels, 1, where)
        self.reduction_ratio = check_int("reduction_ratio", reduction_ratio, 1, where)
        self.dilation = check_int("dilation", dilation, 1, where)
        _check_divides(where, "group_channels", group_channels, channels)
        if reduction_ratio > channels:
            raise ValueError(
                f"{where}: reduction_ratio ({reduction_ratio}) must be at most channels "
                f"({channels}), so the reduction keeps at least one channel"
            )
        self.groups = channels // group_channels
        reduced = channels // reduction_ratio
        check_weights_fit(
            where,
            [
                ("conv1's weight", "channels*(channels//reduction_ratio)", channels * reduced),
                (
                    "conv2's weight",
                    "(channels//reduction_ratio)*kernel_size**2*(channels//group_channels) = "
                    f"{reduced}*{kernel_size}**2*{self.groups}",
                    reduced * kernel_size * kernel_size * self.groups,
                ),
            ],
            "kernel_size, or raise group_channels or reduction_ratio",
        )
        self.avgpool: nn.Module = (
            nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
        )
        self.conv1 = ConvModule1x1(channels, reduced, norm_and_relu=True)
        self.conv2 = ConvModule1x1(reduced, kernel_size * kernel_size * self.groups, False)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The per-pixel kernels, (N, G*k*k, ceil(H/stride), ceil(W/stride)); channel
        g*k*k + i*k + j is row i, column j of group g's kernel."""
        return self.conv2(self.conv1(self.avgpool(x)))

    def window(self) -> tuple[int, int, int, int]:
        return self.kernel_size, self.groups, self.stride, self.dilation

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"group_channels={self.group_channels}, groups={self.groups}, "
            f"reduction_ratio={self.reduction_ratio}, dilation={self.dilation}"
        )


class CARAFEDownPack(_StridedReassembly):
    """CARAFE++'s content-aware downsampler (Wang et al., "CARAFE++: Unified Content-Aware
    ReAssembly of FEatures", TPAMI 2021): (N, C, H, W) -> (N, C, ceil(H/t), ceil(W/t)).

    A 1x1 channel compressor and a content encoder with stride t predict G*k*k logits per
    output pixel; a softmax over each group's k*k taps turns them into kernels; and
    :func:`reassemble` with stride t sums each output pixel's k*k window of the input,
    centred on input pixel (y*t, x*t).

    Where the paper leaves details open this follows :class:`CARAFEPack`'s conventions:

    - submodules ``channel_compressor`` and ``content_encoder``, both ``nn.Conv2d`` with a
      bias;
    - the encoder pads by (encoder_kernel - 1) // 2, so its strided output is
      ceil(H/t) x ceil(W/t), one kernel per output pixel, for any H and W;
    - weights start as in mmcv's ``CARAFEPack.init_weights``: Xavier uniform for both
      convolutions, then a normal(0, 0.001) encoder weight and zero biases, so the
      initial kernels are close to a k*k box filter;
    - the kernels are reassembled with dilation 1 and zero padding outside the input.

    Args:
        channels: C, channels of the input features (and of the output).
        stride: t, the downsampling factor (int >= 1).
        down_kernel: k, odd side of the window each output pixel reassembles.
        down_group: G, kernel groups; channel c uses group c // (C // G). Must divide
            ``channels``.
        encoder_kernel: odd kernel size of the content encoder convolution.
        compressed_channels: output channels of the 1x1 channel compressor.
    """

    def __init__(
        self,
        channels: int,
        stride: int = 2,
        down_kernel: int = 5,
        down_group: int = 1,
        encoder_kernel: int = 3,
        compressed_channels: int = 64,
    ) -> None:
        super().__init__()
        where = "CARAFEDownPack"
        self.channels = channels = check_int("channels", channels, 1, where)
        self.stride = stride = check_int("stride", stride, 1, where)
        self.down_kernel = down_kernel = check_odd("down_kernel", down_kernel, where)
        self.down_group = down_group = check_int("down_group", down_group, 1, where)
        _check_divides(where, "down_group", down_group, channels)
        self.encoder_kernel = check_odd("encoder_kernel", encoder_kernel, where)
        self.compressed_channels = check_int("compressed_channels", compressed_channels, 1, where)
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
                    "compressed_channels*down_kernel**2*down_group*encoder_kernel**2 = "
                    f"{compressed_channels}*{down_kernel}**2*{down_group}*{encoder_kernel}**2",
                    compressed_channels * down_kernel**2 * down_group * encoder_kernel**2,
                ),
            ],
            "down_kernel, down_group, compressed_channels or encoder_kernel",
        )
        self.channel_compressor = nn.Conv2d(channels, compressed_channels, 1)
        self.content_encoder = nn.Conv2d(
            compressed_channels,
            down_kernel * down_kernel * down_group,
            encoder_kernel,
            stride=stride,
            padding=(encoder_kernel - 1) // 2,
        )
        self.init_weights()

    def init_weights(self) -> None:
        from .mmcv_compat import normal_init, xavier_init

        for module in (self.channel_compressor, self.content_encoder):
            xavier_init(module, distribution="uniform")
        normal_init(self.content_encoder, std=0.001)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised kernels, (N, G*k*k, ceil(H/t), ceil(W/t)): each group's k*k taps
        sum to one at every output pixel."""
        logits = self.content_encoder(self.channel_compressor(x))
        return normalize_logits(logits, self.down_kernel, 1)

    def window(self) -> tuple[int, int, int, int]:
        return self.down_kernel, self.down_group, self.stride, 1

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, stride={self.stride}, down_kernel={self.down_kernel}, "
            f"down_group={self.down_group}, encoder_kernel={self.encoder_kernel}, "
            f"compressed_channels={self.compressed_channels}"
        )
