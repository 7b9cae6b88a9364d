"""``python -m carafe_cupy demo``: CARAFE where it belongs, upsampling coarse semantic
features in a segmentation decoder, against nearest, bilinear, deconvolution and pixel
shuffle in the same decoder.

Scenes of discs, squares and triangles are generated on the fly (nothing is downloaded);
the network must class every pixel. One network is trained per upsampler with the same
steps, batches, optimizer, schedule, seed and initial weights of the shared layers, then
scored on held-out scenes: mIoU, boundary F1 and accuracy near boundaries.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

UPSAMPLERS = ("nearest", "bilinear", "deconv", "pixel shuffle", "carafe")
SHOWN_SCENES = 3  # held-out scenes drawn in the figure


class DemoDependencyError(RuntimeError):
    """A package the demo needs (the ``demo`` extra) is not installed."""


@dataclass
class DemoConfig:
    steps: int = 200
    batch_size: int = 8
    image_size: int = 48
    train_scenes: int = 512
    test_scenes: int = 64
    width: int = 24
    learning_rate: float = 5e-3
    seed: int = 0
    # One torch CPU thread: results do not depend on the core count, and these small
    # convolutions gain little from more threads.
    threads: int = 1
    device: str = "auto"
    out_dir: Path = Path("carafe_demo_out")
    upsamplers: tuple[str, ...] = UPSAMPLERS
    progress: bool = True

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """The reduced run for CI: the same pipeline on a small fraction of the budget."""
        settings = {
            "steps": 12,
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
            'pip install ".[demo]" (on a CPU-only machine, first: pip install torch '
            "--index-url https://download.pytorch.org/whl/cpu)"
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


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> list:
    """Train and score every upsampler; write the figures and results to ``config.out_dir``."""
    config.validate()
    _require_demo_packages()
    import torch

    from .._torch.common import backend_name
    from .figures import plot_segmentations, plot_training
    from .report import format_table, summarize
    from .scenes import CLASSES, make_scenes
    from .train import train_and_evaluate

    torch.set_num_threads(config.threads)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    device = pick_device(config.device)
    size = config.image_size
    train_np = make_scenes(config.train_scenes, size, seed=config.seed)
    test_np = make_scenes(config.test_scenes, size, seed=config.seed + 1_000_003)
    train = tuple(torch.from_numpy(a).to(device) for a in train_np)
    test = tuple(torch.from_numpy(a).to(device) for a in test_np)
    log(
        f"device {device} ({torch.get_num_threads()} CPU thread(s)), CARAFE runs as: "
        f"{backend_name(device)}; seed {config.seed}"
    )
    log(
        f"classes: {', '.join(CLASSES)}; {config.train_scenes} training and "
        f"{config.test_scenes} held-out {size}x{size} scenes; {config.steps} steps of "
        f"{config.batch_size} per upsampler"
    )
    results = [
        train_and_evaluate(name, train, test, config, shown=SHOWN_SCENES)
        for name in config.upsamplers
    ]
    table, summary = format_table(results), summarize(results)
    log("\nscores on the held-out scenes, in %:\n")
    log(table)
    log("")
    for line in summary:
        log(line)

    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_segmentations(
        results, test_np[0][:SHOWN_SCENES], test_np[1][:SHOWN_SCENES], out_dir / "segmentations.png"
    )
    plot_training(results, out_dir / "training_curves.png")
    record = {
        "config": {**asdict(config), "out_dir": str(config.out_dir), "device": str(device)},
        "threads": torch.get_num_threads(),
        "carafe_backend": backend_name(device),
        "classes": list(CLASSES),
        "results": [{k: v for k, v in asdict(r).items() if k != "predictions"} for r in results],
        "summary": summary,
    }
    (out_dir / "results.json").write_text(json.dumps(record, indent=2))
    (out_dir / "results.md").write_text(table + "\n\n" + "\n".join(summary) + "\n")
    log(f"\nwrote segmentations.png, training_curves.png, results.json, results.md to {out_dir}")
    return results
