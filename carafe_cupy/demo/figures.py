"""Figures: predicted segmentations with their errors marked, the training curves with
CARAFE's kernel peaks, and the scores of every seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .metrics import boundaries
from .model import CARAFE_KERNEL
from .report import LAYERS, UpsamplerSummary
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
    prediction (from one seed) with its wrong pixels in yellow and its error rate below;
    a legend of the class colours underneath."""
    from matplotlib.patches import Patch

    plt = _pyplot()
    rows, columns = len(images), 2 + len(results)
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.7 * columns, 1.95 * rows + 1.0), squeeze=False
    )
    headers = ["input image", "truth", *(result.name for result in results)]
    for row in range(rows):
        panels = [(images[row].transpose(1, 2, 0), ""), (PALETTE[truth[row]], "")]
        for result in results:
            predicted = result.predictions[row]
            wrong = 100 * float((predicted != truth[row]).mean())
            panels.append((_with_errors(predicted, truth[row]), f"{wrong:.1f}% wrong"))
        for column, (ax, (picture, note)) in enumerate(zip(axes[row], panels)):
            ax.imshow(picture, interpolation="nearest")
            if row == 0:
                ax.set_title(headers[column], fontsize=9)
            ax.set_xlabel(note, fontsize=8, labelpad=2)
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [
        Patch(facecolor=colour, edgecolor="0.5", label=name)
        for name, colour in zip(CLASSES, PALETTE)
    ]
    handles.append(Patch(facecolor=ERROR, edgecolor="0.5", label="wrongly classed pixel"))
    handles.append(Patch(facecolor="0.8", edgecolor="0.5", label="light line: true boundary"))
    seed = results[0].seed if results else None
    fig.suptitle(f"held-out scenes, networks trained from seed {seed}", fontsize=9)
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=len(handles),
        fontsize=8,
        frameon=False,
        handlelength=1.2,
        columnspacing=1.2,
    )
    fig.subplots_adjust(
        left=0.01,
        right=0.99,
        top=1 - 0.5 / fig.get_figheight(),
        bottom=0.45 / fig.get_figheight(),
        wspace=0.06,
        hspace=0.22,
    )
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_training(summaries: list[UpsamplerSummary], path: Path) -> None:
    """Left: training loss per upsampler (cross-entropy, mean over seeds, smoothed over 10
    steps). Right: CARAFE's kernel peak per layer during training (mean over seeds, band:
    lowest to highest seed), against 1/k^2 for uniform kernels."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    for summary in summaries:
        losses = np.mean([run.loss_curve for run in summary.runs], axis=0)
        window = min(10, len(losses))
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        left.plot(np.arange(window, len(losses) + 1), smooth, label=summary.name)
    seeds = len(summaries[0].runs)
    left.set_xlabel("training step")
    left.set_ylabel(f"cross-entropy (mean of {seeds} seeds)")
    left.set_yscale("log")
    left.legend(fontsize=7)
    carafe = next((s for s in summaries if s.kernel_peaks is not None), None)
    if carafe is None:
        right.set_axis_off()
    else:
        curves = np.array([run.kernel_peak_curve for run in carafe.runs])  # seed, probe, col
        steps = curves[0, :, 0]
        for layer, name in enumerate(LAYERS):
            values = curves[:, :, 1 + layer]
            right.plot(steps, values.mean(0), marker=".", label=f"CARAFE {name}")
            right.fill_between(steps, values.min(0), values.max(0), alpha=0.2)
        right.axhline(1 / CARAFE_KERNEL**2, color="0.4", linestyle="--", label="uniform kernels")
        right.set_ylim(0, 1)
        right.set_xlabel("training step")
        right.set_ylabel("kernel peak (mean largest weight)")
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_scores(summaries: list[UpsamplerSummary], path: Path) -> None:
    """Held-out mIoU and boundary F1 of every seed (dots) with the mean and its 95%
    t-interval (bar), per upsampler."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    positions = np.arange(len(summaries))
    for ax, (key, label) in zip(axes, (("miou", "mIoU"), ("boundary_f", "boundary F1 (±1 px)"))):
        for x, summary in zip(positions, summaries):
            values = [100 * run.scores[key] for run in summary.runs]
            ax.scatter(np.full(len(values), x + 0.15), values, s=10, color="0.5", zorder=2)
            interval = summary.scores[key]
            ax.errorbar(
                x,
                100 * interval.mean,
                yerr=100 * interval.half_width,
                fmt="o",
                capsize=4,
                color="C3" if summary.name == "carafe" else "C0",
                zorder=3,
            )
        ax.set_xticks(positions, [summary.name for summary in summaries], fontsize=8)
        ax.set_ylabel(f"held-out {label} (%)")
        ax.grid(axis="y", alpha=0.3)
    seeds = len(summaries[0].runs)
    fig.suptitle(
        f"mean and 95% t-interval over {seeds} seeds (bars), each seed (grey dots)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
