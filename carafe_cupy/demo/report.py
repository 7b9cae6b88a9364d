"""The demo's table and its plain-words summary, computed from the run's own numbers."""

from __future__ import annotations

import numpy as np

from .model import CARAFE_KERNEL
from .train import UpsamplerResult

COLUMNS = (
    ("miou", "mIoU"),
    ("boundary_f", "boundary F1 (±1 px)"),
    ("near_boundary_accuracy", "accuracy ≤2 px from a boundary"),
    ("pixel_accuracy", "pixel accuracy"),
)


def format_table(results: list[UpsamplerResult]) -> str:
    """Markdown, best mIoU first; scores are percentages on the held-out scenes."""
    header = ["upsampler", *(f"{label} (%)" for _, label in COLUMNS)]
    header += ["upsampler params", "train time"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for result in sorted(results, key=lambda r: -r.scores["miou"]):
        cells = [result.name, *(f"{100 * result.scores[key]:.1f}" for key, _ in COLUMNS)]
        cells += [f"{result.upsampler_parameters:,}", f"{result.train_seconds:.1f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paired(carafe: UpsamplerResult, other: UpsamplerResult) -> str:
    ours, theirs = np.array(carafe.per_scene_miou), np.array(other.per_scene_miou)
    valid = ~(np.isnan(ours) | np.isnan(theirs))
    wins = int((ours[valid] > theirs[valid]).sum())
    return f"{wins} of {int(valid.sum())} held-out scenes"


def summarize(results: list[UpsamplerResult]) -> list[str]:
    """The ranking and what it says about CARAFE, whichever way it comes out."""
    ranked = sorted(results, key=lambda r: -r.scores["miou"])
    lines = [
        "ranking by held-out mIoU: "
        + " > ".join(f"{r.name} ({100 * r.scores['miou']:.1f}%)" for r in ranked)
    ]
    by_boundary = sorted(results, key=lambda r: -r.scores["boundary_f"])
    lines.append(
        "ranking by boundary F1: "
        + " > ".join(f"{r.name} ({100 * r.scores['boundary_f']:.1f}%)" for r in by_boundary)
    )
    carafe = next((r for r in results if r.name == "carafe"), None)
    if carafe is None or len(results) < 2:
        return lines
    rank = ranked.index(carafe) + 1
    others = [r for r in ranked if r is not carafe]
    if rank == 1:
        runner_up = others[0]
        margin = 100 * (carafe.scores["miou"] - runner_up.scores["miou"])
        lines.append(
            f"CARAFE ranks first: {margin:.1f} mIoU points above the next best "
            f"({runner_up.name}); its mIoU is higher on {_paired(carafe, runner_up)}"
        )
    else:
        best = ranked[0]
        margin = 100 * (best.scores["miou"] - carafe.scores["miou"])
        lines.append(
            f"CARAFE does not win this run: it ranks {rank} of {len(ranked)}, {margin:.1f} mIoU "
            f"points behind {best.name}, whose mIoU is higher on {_paired(best, carafe)}"
        )
    for other in others:
        miou = 100 * (carafe.scores["miou"] - other.scores["miou"])
        boundary = 100 * (carafe.scores["boundary_f"] - other.scores["boundary_f"])
        lines.append(
            f"  CARAFE vs {other.name}: mIoU {miou:+.1f}, boundary F1 {boundary:+.1f} points; "
            f"CARAFE's mIoU is higher on {_paired(carafe, other)}"
        )
    if carafe.kernel_peak is not None:
        lines.append(
            f"CARAFE's last {CARAFE_KERNEL}x{CARAFE_KERNEL} kernels have a mean peak weight of "
            f"{carafe.kernel_peak:.2f} (uniform {1 / CARAFE_KERNEL**2:.2f}, one-hot 1.00)"
        )
    return lines
