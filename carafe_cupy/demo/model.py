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
# CARAFEPack's defaults, the paper's settings: k_up 5, k_encoder 3, 64 compressed
# channels, one mask group (and its initialisation: xavier, encoder at std 0.001)
CARAFE_SETTINGS = {"up_kernel": 5, "encoder_kernel": 3, "compressed_channels": 64, "up_group": 1}
CARAFE_KERNEL = CARAFE_SETTINGS["up_kernel"]


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
        return CARAFEPack(channels, SCALE, **CARAFE_SETTINGS)
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


def carafe_kernel_peaks(network: SegmentationNetwork, image: torch.Tensor) -> list[float] | None:
    """How far CARAFE's predicted kernels are from uniform, per CARAFE layer (up1, up2):
    the mean over output pixels (and groups) of the largest of a kernel's k*k softmax
    weights on ``image``: 1/k^2 for uniform kernels, 1 for one-hot. None for the other
    upsamplers. The network is run in eval mode, then put back in its former mode."""
    packs = [network.up1, network.up2]
    if not all(isinstance(pack, CARAFEPack) for pack in packs):
        return None
    inputs: dict[int, torch.Tensor] = {}
    handles = [
        pack.register_forward_pre_hook(lambda module, args, i=i: inputs.setdefault(i, args[0]))
        for i, pack in enumerate(packs)
    ]
    training = network.training
    network.eval()
    try:
        with torch.no_grad():
            network(image)
            peaks = []
            for i, pack in enumerate(packs):
                logits = pack.content_encoder(pack.channel_compressor(inputs[i]))
                masks = pack.kernel_normalizer(logits)
                batch, _, height, width = masks.shape
                taps = masks.view(batch, pack.up_group, pack.up_kernel**2, height, width)
                peaks.append(float(taps.amax(dim=2).mean()))
    finally:
        for handle in handles:
            handle.remove()
        network.train(training)
    return peaks
