"""Training and evaluation, identical for every upsampler and seed."""

from __future__ import annotations

import functools
import math
import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .metrics import scores
from .model import (
    SegmentationNetwork,
    carafe_kernel_peaks,
    parameter_count,
    upsampler_parameters,
)
from .scenes import CLASSES, make_scenes

PROBE_SCENES = 16  # held-out scenes on which CARAFE's kernel peaks are measured


@dataclass
class UpsamplerResult:
    """One network (one upsampler, one seed) after training, scored on the held-out scenes."""

    name: str
    seed: int
    upsampler_parameters: int
    total_parameters: int
    train_seconds: float
    scores: dict[str, float]  # on the held-out scenes: miou, boundary_f, ...
    loss_curve: list[float]
    per_scene_miou: list[float] = field(repr=False)
    predictions: Any = field(default=None, repr=False)  # (scenes shown, H, W) labels
    # CARAFE only (see model.carafe_kernel_peaks): [step, peak of up1, peak of up2] from
    # step 0 (the initial weights) to the end of training
    kernel_peak_curve: list[list[float]] | None = None

    @property
    def kernel_peaks(self) -> list[float] | None:
        """The peaks of the trained network's kernels (up1, up2)."""
        return None if self.kernel_peak_curve is None else self.kernel_peak_curve[-1][1:]


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

    def update(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@functools.lru_cache(maxsize=4)
def _scenes(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return make_scenes(count, size, seed)


def training_scenes(config: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Every seed draws its own training scenes (and weights and batches)."""
    return _scenes(config.train_scenes, config.image_size, seed)


def held_out_scenes(config: Any) -> tuple[np.ndarray, np.ndarray]:
    """One held-out set for every seed and upsampler, drawn from the first seed."""
    return _scenes(config.test_scenes, config.image_size, config.seed + 1_000_003)


def probe_steps(steps: int) -> set[int]:
    """When CARAFE's kernel peaks are measured: before training, about 20 times during
    it, and at the end."""
    return set(range(0, steps, max(1, steps // 20))) | {steps}


def train_and_evaluate(name: str, seed: int, config: Any, shown: int) -> UpsamplerResult:
    """Train one network with upsampler ``name`` from ``seed``; score it on the held-out
    scenes. Runs on the device ``config`` names, with ``config.threads`` CPU threads."""
    from . import pick_device

    torch.set_num_threads(config.threads)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    device = pick_device(config.device)
    images, labels = (torch.from_numpy(a).to(device) for a in training_scenes(config, seed))
    test_images, test_labels = (torch.from_numpy(a).to(device) for a in held_out_scenes(config))
    probe = test_images[:PROBE_SCENES]
    network = SegmentationNetwork(name, config.width, len(CLASSES), seed).to(device)
    # eps small enough not to damp the tiny gradients of CARAFE's mask encoder, whose
    # weights start at std 0.001 (mmcv's initialisation); the same for every upsampler
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate, eps=1e-10)
    order = np.random.default_rng(seed)  # the same batches for every upsampler
    probes = probe_steps(config.steps)
    curve: list[list[float]] = []
    losses = []
    probe_seconds = 0.0
    start = time.perf_counter()
    for step in range(config.steps + 1):
        if step in probes:  # eval mode, no gradients: training is the same without it
            started = time.perf_counter()
            peaks = carafe_kernel_peaks(network, probe)
            if peaks is not None:
                curve.append([step, *peaks])
            probe_seconds += time.perf_counter() - started
        if step == config.steps:
            break
        for group in optimizer.param_groups:  # cosine schedule
            group["lr"] = config.learning_rate * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        index = torch.from_numpy(order.integers(len(images), size=config.batch_size))
        loss = F.cross_entropy(network(images[index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start - probe_seconds
    predicted = predict(network, test_images)
    truth = test_labels.cpu().numpy()
    return UpsamplerResult(
        name=name,
        seed=seed,
        upsampler_parameters=upsampler_parameters(network),
        total_parameters=parameter_count(network),
        train_seconds=seconds,
        scores=scores(predicted, truth, len(CLASSES)),
        loss_curve=losses,
        per_scene_miou=[scores(p, t, len(CLASSES))["miou"] for p, t in zip(predicted, truth)],
        predictions=predicted[:shown],
        kernel_peak_curve=curve or None,
    )


def _run(task: tuple[str, int, Any, int]) -> UpsamplerResult:
    return train_and_evaluate(*task)


def run_all(
    tasks: list[tuple[str, int]],
    config: Any,
    shown: int,
    jobs: int,
    done: Callable[[UpsamplerResult], None],
) -> list[UpsamplerResult]:
    """Every (upsampler, seed) of ``tasks``, ``jobs`` at a time, in worker processes when
    ``jobs`` > 1 (each with ``config.threads`` threads, so the results do not depend on
    ``jobs``); ``done`` sees each result as it comes. Returned in the order of ``tasks``."""
    work = [(name, seed, config, shown) for name, seed in tasks]
    if jobs == 1:
        results = []
        for item in work:
            results.append(_run(item))
            done(results[-1])
        return results
    # the slow ones (CARAFE) first, so that the last to finish are short
    order = sorted(range(len(work)), key=lambda i: work[i][0] != "carafe")
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(_run, work[i]): i for i in order}
        finished: dict[int, UpsamplerResult] = {}
        for future in as_completed(futures):
            finished[futures[future]] = future.result()
            done(finished[futures[future]])
    return [finished[i] for i in range(len(work))]
