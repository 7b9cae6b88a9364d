"""The segmentation network: an encoder down to 1/4 resolution, then a decoder that
upsamples twice with the upsampler under test, as the top-down path of a feature pyramid.
Everything but the upsampler is the same, down to the initial weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..nn import CARAFEPack

UPSAMPLERS = ("nearest", "bilinear", "deconv", "pixel shuffle", "carafe")
SCALE = 2
CARAFE_KERNEL = 5  # mmcv's default up_kernel


def make_upsampler(name: str, channels: int) -> nn.Module:
    """A x2 upsampler of ``channels`` feature maps."""
    if name in ("nearest", "bilinear"):
        return nn.Upsample(scale_factor=SCALE, mode=name)
    if name == "deconv":
        return nn.ConvTranspose2d(channels, channels, 2 * SCALE, stride=SCALE, padding=SCALE // 2)
    if name == "pixel shuffle":
        return nn.Sequential(
            nn.Conv2d(channels, channels * SCALE * SCALE, 3, padding=1), nn.PixelShuffle(SCALE)
        )
    if name == "carafe":
        # mmcv's defaults (k_up=5, k_encoder=3), with the compressor sized to this network
        return CARAFEPack(
            channels, SCALE, up_kernel=CARAFE_KERNEL, compressed_channels=channels // 2
        )
    raise ValueError(f"demo: unknown upsampler {name!r}; expected one of {', '.join(UPSAMPLERS)}")


def _conv(inputs: int, outputs: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, stride, padding=1, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(),
    )


class SegmentationNetwork(nn.Module):
    """image (N, 3, H, W) -> class logits (N, classes, H, W).

    Encoder: full -> 1/2 -> 1/4 resolution. Decoder: the 1/4 features are upsampled to 1/2
    and added to a lateral 1x1 projection of the 1/2 features (as in FPN), then upsampled
    to full resolution, where a 3x3 conv and a 1x1 classifier make the prediction. There is
    no full-resolution shortcut: the last upsampler alone restores the fine boundaries.
    """

    def __init__(self, upsampler: str, width: int, classes: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = _conv(3, width // 2)
        self.down1 = nn.Sequential(_conv(width // 2, width, 2), _conv(width, width))
        self.down2 = nn.Sequential(_conv(width, width, 2), _conv(width, width), _conv(width, width))
        self.lateral = nn.Conv2d(width, width, 1)
        self.merge = _conv(width, width)
        self.head = nn.Sequential(_conv(width, width), nn.Conv2d(width, classes, 1))
        # The upsamplers draw from their own seed, so the shared layers start identical.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            self.up1 = make_upsampler(upsampler, width)
            self.up2 = make_upsampler(upsampler, width)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        half = self.down1(self.stem(image))
        quarter = self.down2(half)
        merged = self.merge(self.up1(quarter) + self.lateral(half))
        return self.head(self.up2(merged))


def parameter_count(module: Any) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def upsampler_parameters(network: SegmentationNetwork) -> int:
    return parameter_count(network.up1) + parameter_count(network.up2)


def carafe_kernel_peak(network: SegmentationNetwork, image: torch.Tensor) -> float | None:
    """Mean largest weight of the last CARAFE's predicted kernels on ``image``
    (1/k^2 for uniform kernels, 1 for one-hot); None for the other upsamplers."""
    pack = network.up2
    if not isinstance(pack, CARAFEPack):
        return None
    captured: dict[str, torch.Tensor] = {}
    handle = network.merge.register_forward_hook(
        lambda module, args, output: captured.setdefault("x", output)
    )
    with torch.no_grad():
        network(image)
        handle.remove()
        logits = pack.content_encoder(pack.channel_compressor(captured["x"]))
        masks = pack.kernel_normalizer(logits)
    return float(masks.amax(dim=1).mean())
