"""Figures: predicted segmentations with their errors marked, and the training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .metrics import boundaries
from .scenes import CLASSES
from .train import UpsamplerResult

# background, disc, square, triangle
PALETTE = np.array([[0.15, 0.15, 0.15], [0.9, 0.45, 0.35], [0.4, 0.8, 0.45], [0.45, 0.55, 0.95]])
ERROR = np.array([1.0, 1.0, 0.0])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _with_errors(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Class colours, wrong pixels in yellow, true boundaries as thin white lines."""
    picture = PALETTE[predicted].copy()
    picture[predicted != truth] = ERROR
    picture[boundaries(truth)] = 0.5 * picture[boundaries(truth)] + 0.5
    return picture


def plot_segmentations(
    results: list[UpsamplerResult], images: np.ndarray, truth: np.ndarray, path: Path
) -> None:
    """One row per held-out scene: the image, the true classes, then every upsampler's
    prediction with its wrong pixels in yellow (titles: that scene's error rate)."""
    plt = _pyplot()
    rows, columns = len(images), 2 + len(results)
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.9 * columns, 2.0 * rows + 0.6), squeeze=False
    )
    for row in range(rows):
        panels = [(images[row].transpose(1, 2, 0), "input image"), (PALETTE[truth[row]], "truth")]
        for result in results:
            predicted = result.predictions[row]
            wrong = 100 * float((predicted != truth[row]).mean())
            panels.append(
                (_with_errors(predicted, truth[row]), f"{result.name}\n{wrong:.1f}% wrong")
            )
        for ax, (picture, title) in zip(axes[row], panels):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    legend = ", ".join(f"{name}" for name in CLASSES)
    fig.suptitle(
        f"held-out scenes; classes: {legend}; yellow = wrongly classed pixel, "
        "light line = true boundary",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_training(results: list[UpsamplerResult], path: Path) -> None:
    """Training loss (cross-entropy, smoothed over 10 steps) per upsampler."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    for result in results:
        losses = np.array(result.loss_curve)
        window = min(10, len(losses))
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window, len(losses) + 1), smooth, label=result.name)
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (10-step mean)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
