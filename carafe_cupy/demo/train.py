"""Training and evaluation, identical for every upsampler."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .metrics import scores
from .model import SegmentationNetwork, carafe_kernel_peak, parameter_count, upsampler_parameters
from .scenes import CLASSES


@dataclass
class UpsamplerResult:
    name: str
    upsampler_parameters: int
    total_parameters: int
    train_seconds: float
    scores: dict[str, float]  # on the held-out scenes: miou, boundary_f, ...
    loss_curve: list[float]
    per_scene_miou: list[float] = field(repr=False)
    predictions: Any = field(default=None, repr=False)  # (scenes shown, H, W) labels
    kernel_peak: float | None = None  # CARAFE only, see model.carafe_kernel_peak


def predict(network: SegmentationNetwork, images: torch.Tensor, batch: int = 16) -> np.ndarray:
    network.eval()
    with torch.no_grad():
        out = [network(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)]
    network.train()
    return torch.cat(out).cpu().numpy()


class Progress:
    """A tqdm bar on a terminal; nothing at all when stderr is a file or a pipe."""

    def __init__(self, total: int, description: str, enabled: bool) -> None:
        self._bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, desc=description, leave=False, file=sys.stderr)
            except ImportError:
                pass

    def update(self, loss: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def train_and_evaluate(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    config: Any,
    shown: int,
) -> UpsamplerResult:
    """Train one network with upsampler ``name``; score it on the held-out scenes."""
    images, labels = train
    network = SegmentationNetwork(name, config.width, len(CLASSES), config.seed)
    network = network.to(images.device)
    # eps small enough not to damp the tiny gradients of CARAFE's mask encoder, whose
    # weights start at std 0.001 (mmcv's initialisation); the same for every upsampler
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate, eps=1e-10)
    order = np.random.default_rng(config.seed)  # the same batches for every upsampler
    bar = Progress(config.steps, name, config.progress)
    losses = []
    start = time.perf_counter()
    for step in range(config.steps):
        for group in optimizer.param_groups:  # cosine schedule
            group["lr"] = config.learning_rate * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        index = torch.from_numpy(order.integers(len(images), size=config.batch_size))
        loss = F.cross_entropy(network(images[index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.update(losses[-1])
    bar.close()
    seconds = time.perf_counter() - start
    test_images, test_labels = test
    predicted = predict(network, test_images)
    truth = test_labels.cpu().numpy()
    return UpsamplerResult(
        name=name,
        upsampler_parameters=upsampler_parameters(network),
        total_parameters=parameter_count(network),
        train_seconds=seconds,
        scores=scores(predicted, truth, len(CLASSES)),
        loss_curve=losses,
        per_scene_miou=[scores(p, t, len(CLASSES))["miou"] for p, t in zip(predicted, truth)],
        predictions=predicted[:shown],
        kernel_peak=carafe_kernel_peak(network, test_images[:8]),
    )
