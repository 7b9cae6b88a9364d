"""``python -m carafe_cupy demo``: CARAFE where it belongs, upsampling coarse semantic
features in a segmentation decoder, against nearest, bilinear, deconvolution and pixel
shuffle in the same decoder.

Scenes of discs, squares and triangles are generated on the fly (nothing is downloaded);
the network must class every pixel. For every seed, one network is trained per upsampler
with the same training scenes, steps, batches, optimizer, schedule and initial weights of
the shared layers, then scored on held-out scenes: mIoU, boundary F1 and accuracy near
boundaries. The scores are reported as means over the seeds with 95% t-intervals, CARAFE
against each other upsampler paired by seed, and CARAFE's kernel peak (how far its
predicted kernels are from uniform) before and after training.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._core.errors import CPU_TORCH_HINT

UPSAMPLERS = ("nearest", "bilinear", "deconv", "pixel shuffle", "carafe")
SHOWN_SCENES = 3  # held-out scenes drawn in the figure


class DemoDependencyError(RuntimeError):
    """A package the demo needs (the ``demo`` extra) is not installed."""


@dataclass
class DemoConfig:
    steps: int = 300
    batch_size: int = 8
    image_size: int = 48
    train_scenes: int = 512
    test_scenes: int = 128
    width: int = 24
    learning_rate: float = 5e-3
    seed: int = 0  # the first seed; the others follow it (seed + 1, ...)
    seeds: int = 5
    # One torch CPU thread per network: results do not depend on the core count, and
    # these small convolutions gain little from more threads.
    threads: int = 1
    # networks trained at once, in worker processes; 0: as many as the CPU cores allow
    # at ``threads`` each on the CPU, one on a GPU. The results do not depend on it.
    jobs: int = 0
    device: str = "auto"
    out_dir: Path = Path("carafe_demo_out")
    upsamplers: tuple[str, ...] = UPSAMPLERS
    progress: bool = True

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """The reduced run for CI: the same pipeline on a small fraction of the budget."""
        settings = {
            "steps": 12,
            "seeds": 2,
            "width": 16,
            "train_scenes": 32,
            "test_scenes": 8,
            "image_size": 32,
        }
        settings.update(overrides)
        return cls(**settings)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "train_scenes", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"demo: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.seeds, int) or isinstance(self.seeds, bool) or self.seeds < 2:
            raise ValueError(
                f"demo: seeds must be an integer >= 2 (a spread needs two), got {self.seeds!r}"
            )
        if not isinstance(self.jobs, int) or isinstance(self.jobs, bool) or self.jobs < 0:
            raise ValueError(f"demo: jobs must be an integer >= 0 (0: auto), got {self.jobs!r}")
        if not isinstance(self.test_scenes, int) or self.test_scenes < SHOWN_SCENES:
            raise ValueError(
                f"demo: test_scenes must be an integer >= {SHOWN_SCENES}, got {self.test_scenes!r}"
            )
        if not isinstance(self.image_size, int) or self.image_size < 16 or self.image_size % 8:
            raise ValueError(
                f"demo: image_size must be a multiple of 8, at least 16, got {self.image_size!r}"
            )
        if not isinstance(self.width, int) or self.width < 4 or self.width % 2:
            raise ValueError(f"demo: width must be an even integer >= 4, got {self.width!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"demo: learning_rate must be > 0, got {self.learning_rate!r}")
        unknown = [name for name in self.upsamplers if name not in UPSAMPLERS]
        if unknown or not self.upsamplers:
            raise ValueError(
                f"demo: upsamplers must be a non-empty selection of {', '.join(UPSAMPLERS)}; "
                f"got {', '.join(self.upsamplers) or 'none'}"
            )


def _require_demo_packages() -> None:
    missing = []
    for module in ("torch", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise DemoDependencyError(
            f"the demo needs {', '.join(missing)}; install them with: "
            f'pip install ".[demo]" (on a CPU-only machine, first {CPU_TORCH_HINT})'
        )


def pick_device(requested: str) -> Any:
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"demo: device must be auto, cpu or cuda, got {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("demo: device 'cuda' was requested but torch sees no CUDA GPU")
    return torch.device(requested)


def dumps(record: dict[str, Any]) -> str:
    """JSON, indented, with every list of plain numbers (a loss curve) on one line."""
    number = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
    return re.sub(
        rf"\[\s+({number}(?:,\s+{number})*)\s+\]",
        lambda match: "[" + ", ".join(re.split(r",\s+", match.group(1))) + "]",
        json.dumps(record, indent=2),
    )


def _cpu_seconds() -> float | None:
    """CPU time of this process and of its finished worker processes (None off Unix)."""
    try:
        import resource
    except ImportError:
        return None
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def resolve_jobs(config: DemoConfig, device: Any, runs: int) -> int:
    """``config.jobs``, or for 0 what the machine allows: on the CPU, one network per
    ``threads`` cores this process may use; on a GPU, one."""
    if config.jobs:
        return min(config.jobs, runs)
    if device.type != "cpu":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores // config.threads, runs))


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> list:
    """Train and score every upsampler from every seed; write the figures and results to
    ``config.out_dir``. Returns the per-upsampler summaries (see ``report``)."""
    config.validate()
    _require_demo_packages()

    from .._torch.common import backend_name
    from .figures import plot_scores, plot_segmentations, plot_training
    from .model import CARAFE_SETTINGS
    from .report import (
        aggregate_record,
        format_paired,
        format_table,
        paired_differences,
        summarize,
        summarize_upsamplers,
    )
    from .scenes import CLASSES
    from .train import Progress, held_out_scenes, run_all

    started, cpu_started = time.perf_counter(), _cpu_seconds()
    device = pick_device(config.device)
    seeds = [config.seed + i for i in range(config.seeds)]
    tasks = [(name, seed) for seed in seeds for name in config.upsamplers]
    jobs = resolve_jobs(config, device, len(tasks))
    size = config.image_size
    log(
        f"device {device}, CARAFE runs as: {backend_name(device)}; {jobs} network(s) at a "
        f"time, {config.threads} torch thread(s) each; seeds {seeds[0]} to {seeds[-1]}"
    )
    log(
        f"classes: {', '.join(CLASSES)}; per seed {config.train_scenes} training scenes, "
        f"{config.test_scenes} held-out {size}x{size} scenes (the same for every seed); "
        f"{config.steps} steps of {config.batch_size} per network; CARAFE: CARAFEPack "
        + ", ".join(f"{key} {value}" for key, value in CARAFE_SETTINGS.items())
    )
    bar = Progress(len(tasks), "networks", config.progress)

    def done(result: Any) -> None:
        text = f"seed {result.seed} {result.name}: mIoU {100 * result.scores['miou']:.1f}%"
        bar.update(text)
        log(f"  {text} ({result.train_seconds:.1f} s)")

    results = run_all(tasks, config, SHOWN_SCENES, jobs, done)
    bar.close()
    summaries = summarize_upsamplers(results, config.upsamplers)
    differences = paired_differences(summaries)
    table, paired = format_table(summaries), format_paired(differences)
    summary = summarize(summaries, differences, config.steps)
    log(f"\nscores on the held-out scenes, in %, over {config.seeds} seeds:\n")
    log(table)
    if paired:
        log("\n" + paired)
    log("")
    for line in summary:
        log(line)

    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test_images, test_labels = held_out_scenes(config)
    first_seed = [r for r in results if r.seed == seeds[0]]
    plot_segmentations(
        first_seed,
        test_images[:SHOWN_SCENES],
        test_labels[:SHOWN_SCENES],
        out_dir / "segmentations.png",
    )
    plot_training(summaries, out_dir / "training_curves.png")
    plot_scores(summaries, out_dir / "scores.png")
    wall = time.perf_counter() - started
    cpu = None if cpu_started is None else _cpu_seconds() - cpu_started
    record = {
        "config": {**asdict(config), "out_dir": str(config.out_dir), "device": str(device)},
        "jobs": jobs,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "carafe_backend": backend_name(device),
        "carafe_settings": CARAFE_SETTINGS,
        "classes": list(CLASSES),
        "aggregate": aggregate_record(summaries, differences),
        "summary": summary,
        "runs": [{k: v for k, v in asdict(r).items() if k != "predictions"} for r in results],
    }
    (out_dir / "results.json").write_text(dumps(record) + "\n")
    (out_dir / "results.md").write_text(
        "\n\n".join(part for part in (table, paired, "\n".join(summary)) if part) + "\n"
    )
    cpu_text = "" if cpu is None else f", {cpu:.0f} s of CPU time"
    log(
        f"\nwrote segmentations.png, training_curves.png, scores.png, results.json, results.md "
        f"to {out_dir} ({wall:.0f} s of wall time{cpu_text})"
    )
    return summaries
