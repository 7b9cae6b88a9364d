"""The demo's tables and plain-words summary, computed from the run's own numbers.

Scores are aggregated over seeds: the mean, the standard deviation and a Student-t
confidence interval. CARAFE is compared with every other upsampler seed by seed (the
same seed gives both networks the same scenes, shared weights and batches), and a
difference is called significant only when its interval excludes zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .model import CARAFE_KERNEL
from .stats import Interval, mean_interval, paired_interval
from .train import UpsamplerResult

COLUMNS = (
    ("miou", "mIoU"),
    ("boundary_f", "boundary F1 (±1 px)"),
    ("near_boundary_accuracy", "accuracy ≤2 px from a boundary"),
    ("pixel_accuracy", "pixel accuracy"),
)
LAYERS = ("1/4→1/2", "1/2→1")  # the decoder's two upsamplers, up1 and up2


@dataclass
class UpsamplerSummary:
    """One upsampler over all seeds."""

    name: str
    runs: list[UpsamplerResult]  # one per seed, in seed order
    scores: dict[str, Interval]  # fractions in [0, 1], as the runs' scores
    upsampler_parameters: int
    train_seconds: float  # mean over the runs
    initial_kernel_peaks: list[Interval] | None = None  # CARAFE: per layer, step 0
    kernel_peaks: list[Interval] | None = None  # CARAFE: per layer, after training


@dataclass
class PairedDifference:
    """CARAFE minus another upsampler, seed by seed."""

    other: str
    scores: dict[str, Interval]
    wins: int  # seeds on which CARAFE's mIoU is higher
    seeds: int

    def verdict(self) -> str:
        miou = self.scores["miou"]
        if miou.low > 0:
            return "higher"
        if miou.high < 0:
            return "lower"
        return "not distinguishable"


def summarize_upsamplers(
    results: list[UpsamplerResult], names: tuple[str, ...]
) -> list[UpsamplerSummary]:
    summaries = []
    for name in names:
        runs = sorted((r for r in results if r.name == name), key=lambda r: r.seed)
        summary = UpsamplerSummary(
            name=name,
            runs=runs,
            scores={key: mean_interval([r.scores[key] for r in runs]) for key, _ in COLUMNS},
            upsampler_parameters=runs[0].upsampler_parameters,
            train_seconds=sum(r.train_seconds for r in runs) / len(runs),
        )
        if runs[0].kernel_peak_curve is not None:
            layers = range(len(LAYERS))
            summary.initial_kernel_peaks = [
                mean_interval([r.kernel_peak_curve[0][1 + layer] for r in runs]) for layer in layers
            ]
            summary.kernel_peaks = [
                mean_interval([r.kernel_peaks[layer] for r in runs]) for layer in layers
            ]
        summaries.append(summary)
    return summaries


def paired_differences(summaries: list[UpsamplerSummary]) -> list[PairedDifference]:
    """CARAFE against each other upsampler, best mean mIoU first; [] without CARAFE."""
    carafe = next((s for s in summaries if s.name == "carafe"), None)
    if carafe is None:
        return []
    differences = []
    for other in sorted(summaries, key=lambda s: -s.scores["miou"].mean):
        if other is carafe:
            continue
        assert [r.seed for r in other.runs] == [r.seed for r in carafe.runs]
        differences.append(
            PairedDifference(
                other=other.name,
                scores={
                    key: paired_interval(
                        [r.scores[key] for r in carafe.runs], [r.scores[key] for r in other.runs]
                    )
                    for key, _ in COLUMNS
                },
                wins=sum(
                    a.scores["miou"] > b.scores["miou"] for a, b in zip(carafe.runs, other.runs)
                ),
                seeds=len(carafe.runs),
            )
        )
    return differences


def _percent(interval: Interval) -> str:
    return f"{100 * interval.mean:.1f} ± {100 * interval.half_width:.1f}"


def _points(interval: Interval) -> str:
    return f"{100 * interval.mean:+.1f} [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]"


def format_table(summaries: list[UpsamplerSummary]) -> str:
    """Markdown, best mean mIoU first: mean ± half-width of the 95% interval over seeds."""
    header = ["upsampler", *(f"{label} (%)" for _, label in COLUMNS)]
    header[2:2] = ["mIoU sd"]
    header += ["upsampler params", "train time per run"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for summary in sorted(summaries, key=lambda s: -s.scores["miou"].mean):
        cells = [summary.name, *(_percent(summary.scores[key]) for key, _ in COLUMNS)]
        cells[2:2] = [f"{100 * summary.scores['miou'].sd:.1f}"]
        cells += [f"{summary.upsampler_parameters:,}", f"{summary.train_seconds:.1f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_paired(differences: list[PairedDifference]) -> str:
    """Markdown: CARAFE minus each other upsampler, in points, with 95% intervals."""
    if not differences:
        return ""
    lines = [
        "| CARAFE minus | mIoU (points) [95% CI] | boundary F1 (points) [95% CI] "
        "| seeds where CARAFE's mIoU is higher | CARAFE's mIoU is |",
        "| --- | --- | --- | --- | --- |",
    ]
    for difference in differences:
        cells = [
            difference.other,
            _points(difference.scores["miou"]),
            _points(difference.scores["boundary_f"]),
            f"{difference.wins} of {difference.seeds}",
            difference.verdict(),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kernel_peak_line(summary: UpsamplerSummary, steps: int) -> str:
    """How far CARAFE's kernels moved from uniform (1/k^2) during training."""
    layers = "; ".join(
        f"{layer} layer {start.mean:.3f} at initialisation, "
        f"{end.mean:.3f} ± {end.half_width:.3f} after {steps} steps"
        for layer, start, end in zip(LAYERS, summary.initial_kernel_peaks, summary.kernel_peaks)
    )
    return (
        f"CARAFE's kernel peak (mean over output pixels of the largest of the "
        f"{CARAFE_KERNEL}x{CARAFE_KERNEL} softmax weights; uniform {1 / CARAFE_KERNEL**2:.2f}, "
        f"one-hot 1.00): {layers}"
    )


def summarize(
    summaries: list[UpsamplerSummary], differences: list[PairedDifference], steps: int
) -> list[str]:
    """The ranking and what it says about CARAFE, whichever way it comes out."""
    seeds = summaries[0].scores["miou"].n
    level = round(100 * summaries[0].scores["miou"].confidence)
    lines = [
        f"scores: mean ± half-width of the {level}% t-interval over {seeds} seeds "
        "(seed: training scenes, initial weights, batch order; the held-out scenes are shared)"
    ]
    for key, label in (("miou", "mIoU"), ("boundary_f", "boundary F1")):
        ranked = sorted(summaries, key=lambda s: -s.scores[key].mean)
        lines.append(
            f"ranking by mean {label}: "
            + " > ".join(f"{s.name} ({_percent(s.scores[key])})" for s in ranked)
        )
    carafe = next((s for s in summaries if s.name == "carafe"), None)
    if carafe is None:
        return lines
    if differences:
        ranked = sorted(summaries, key=lambda s: -s.scores["miou"].mean)
        groups: dict[str, list[str]] = {"higher": [], "lower": [], "not distinguishable": []}
        for difference in differences:
            groups[difference.verdict()].append(difference.other)
        parts = [
            f"{verdict} than {', '.join(names)}"
            if verdict != "not distinguishable"
            else f"not distinguishable from {', '.join(names)} (the interval spans 0)"
            for verdict, names in groups.items()
            if names
        ]
        lines.append(
            f"CARAFE ranks {ranked.index(carafe) + 1} of {len(ranked)} by mean mIoU; "
            f"paired by seed at {level}% confidence, its mIoU is " + "; ".join(parts)
        )
        for difference in differences:
            lines.append(
                f"  CARAFE minus {difference.other}: mIoU "
                f"{_points(difference.scores['miou'])}, boundary F1 "
                f"{_points(difference.scores['boundary_f'])} points; CARAFE's mIoU is higher "
                f"on {difference.wins} of {difference.seeds} seeds"
            )
    if carafe.kernel_peaks is not None:
        lines.append(kernel_peak_line(carafe, steps))
    return lines


def _interval_record(interval: Interval) -> dict[str, float]:
    return {
        "mean": interval.mean,
        "sd": interval.sd,
        "ci_low": interval.low,
        "ci_high": interval.high,
        "n": interval.n,
        "confidence": interval.confidence,
    }


def aggregate_record(
    summaries: list[UpsamplerSummary], differences: list[PairedDifference]
) -> dict[str, Any]:
    """The aggregates for results.json."""
    upsamplers = {}
    for summary in summaries:
        entry: dict[str, Any] = {
            "seeds": [r.seed for r in summary.runs],
            "upsampler_parameters": summary.upsampler_parameters,
            "mean_train_seconds": summary.train_seconds,
            "scores": {key: _interval_record(value) for key, value in summary.scores.items()},
            "per_seed_miou": [r.scores["miou"] for r in summary.runs],
        }
        if summary.kernel_peaks is not None:
            entry["kernel_peak"] = {
                layer: {
                    "initial": _interval_record(start),
                    "trained": _interval_record(end),
                    "uniform": 1 / CARAFE_KERNEL**2,
                }
                for layer, start, end in zip(
                    LAYERS, summary.initial_kernel_peaks, summary.kernel_peaks
                )
            }
        upsamplers[summary.name] = entry
    paired = {
        difference.other: {
            "scores": {key: _interval_record(value) for key, value in difference.scores.items()},
            "carafe_higher_on_seeds": difference.wins,
            "seeds": difference.seeds,
            "carafe_miou_is": difference.verdict(),
        }
        for difference in differences
    }
    return {"upsamplers": upsamplers, "carafe_minus": paired}
