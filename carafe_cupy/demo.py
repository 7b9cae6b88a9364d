"""``python -m carafe_cupy demo``: CARAFE against fixed upsamplers on real photographs.

One tiny x2 super-resolution network (conv encoder at low resolution, an
upsampler, conv head at high resolution, plus a bicubic skip of the input) is
trained once per upsampler with everything else equal: the same steps, batches,
optimizer, initial weights of the shared layers and seed. The task is to
reconstruct the luminance of a photograph from its 2x2-averaged version.
Training uses patches of some of scikit-image's bundled photographs; the table
reports PSNR on other photographs that training never sees.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCALE = 2
UPSAMPLERS = ("nearest", "bilinear", "deconv", "pixel shuffle", "carafe")
# Bundled with scikit-image (no download). Held-out photographs are never trained on.
TRAIN_IMAGES = ("astronaut", "coffee", "rocket", "motorcycle", "coins", "moon", "brick", "gravel")
HELD_OUT_IMAGES = ("chelsea", "camera")
# Side of the centre region of the first held-out photograph shown in the reconstructions figure.
SAMPLE_SIZE = 96
CARAFE_KERNEL = 5  # mmcv's default up_kernel


class DemoDependencyError(RuntimeError):
    """A package the demo needs (the ``demo`` extra) is not installed."""


@dataclass
class DemoConfig:
    steps: int = 300
    batch_size: int = 8
    patch_size: int = 32
    width: int = 32
    learning_rate: float = 2e-3
    eval_every: int = 60
    seed: int = 0
    # One torch CPU thread: results do not depend on the core count, and small convolutions
    # gain little from more threads (which spin against other work on a busy machine).
    threads: int = 1
    device: str = "auto"
    out_dir: Path = Path("carafe_demo_out")
    upsamplers: tuple[str, ...] = UPSAMPLERS
    progress: bool = True
    held_out_size: int | None = None  # evaluate on centre crops of this side (None: whole)

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """The reduced run for CI: same pipeline, a fraction of the steps."""
        settings = {"steps": 40, "eval_every": 20, "width": 16, "held_out_size": 192}
        settings.update(overrides)
        return cls(**settings)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "width", "eval_every", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"demo: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.patch_size, int) or self.patch_size < 8 or self.patch_size % 2:
            raise ValueError(
                f"demo: patch_size must be an even integer >= 8, got {self.patch_size!r}"
            )
        size = self.held_out_size
        if size is not None and (not isinstance(size, int) or size < SAMPLE_SIZE or size % 2):
            raise ValueError(
                f"demo: held_out_size must be None or an even integer >= {SAMPLE_SIZE}, "
                f"got {size!r}"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"demo: learning_rate must be > 0, got {self.learning_rate!r}")
        unknown = [name for name in self.upsamplers if name not in UPSAMPLERS]
        if unknown or not self.upsamplers:
            raise ValueError(
                f"demo: upsamplers must be a non-empty selection of {', '.join(UPSAMPLERS)}; "
                f"got {', '.join(self.upsamplers) or 'none'}"
            )


@dataclass
class UpsamplerResult:
    name: str
    upsampler_parameters: int
    total_parameters: int
    train_seconds: float
    held_out_psnr: dict[str, float]
    loss_curve: list[float]
    psnr_curve: list[tuple[int, float]]
    sample: Any = field(default=None, repr=False)  # reconstructed crop, numpy (H, W)
    # CARAFE only: mean over held-out pixels of the largest weight in each predicted kernel.
    kernel_peak: float | None = None

    @property
    def mean_psnr(self) -> float:
        return float(np.mean(list(self.held_out_psnr.values())))


# ---------------------------------------------------------------- dependencies and data


def _require_demo_packages() -> None:
    missing = []
    for module in ("torch", "skimage", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        names = {"skimage": "scikit-image"}
        listing = ", ".join(names.get(module, module) for module in missing)
        raise DemoDependencyError(
            f'the demo needs {listing}; install them with: pip install "carafe_cupy[torch,demo]"'
        )


def load_luminance(name: str) -> np.ndarray:
    """A bundled scikit-image photograph as float32 luminance in [0, 1], even-sized."""
    import skimage.color
    import skimage.data

    if name == "motorcycle":
        image = skimage.data.stereo_motorcycle()[0]
    else:
        image = getattr(skimage.data, name)()
    image = np.asarray(image)
    if image.ndim == 3:
        image = skimage.color.rgb2gray(image[..., :3])
    else:
        image = image.astype(np.float64) / np.iinfo(image.dtype).max
    height, width = (size - size % SCALE for size in image.shape)
    return np.ascontiguousarray(image[:height, :width], dtype=np.float32)


def centre_crop(image: Any, size: int) -> Any:
    """The centre ``size`` x ``size`` region (or less, where the image is smaller)."""
    height, width = image.shape[-2:]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return image[..., top : top + size, left : left + size]


def downsample(high: Any) -> Any:
    """The degradation to undo: average each SCALE x SCALE block."""
    import torch.nn.functional as F

    return F.avg_pool2d(high, SCALE)


def training_batches(images: list[np.ndarray], config: DemoConfig) -> Iterator[np.ndarray]:
    """Random patches with random flips and transposes; the same sequence for every seed."""
    rng = np.random.default_rng(config.seed)
    size = config.patch_size
    for _ in range(config.steps):
        batch = np.empty((config.batch_size, 1, size, size), dtype=np.float32)
        for index in range(config.batch_size):
            image = images[rng.integers(len(images))]
            top = rng.integers(image.shape[0] - size + 1)
            left = rng.integers(image.shape[1] - size + 1)
            patch = image[top : top + size, left : left + size]
            if rng.random() < 0.5:
                patch = patch[:, ::-1]
            if rng.random() < 0.5:
                patch = patch.T
            batch[index, 0] = patch
        yield batch


def psnr(prediction: Any, target: Any) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    error = float(((prediction.clamp(0, 1) - target) ** 2).mean())
    return 10 * math.log10(1 / max(error, 1e-12))


# ---------------------------------------------------------------- the network


def make_upsampler(name: str, channels: int) -> Any:
    """A x2 upsampler of ``channels`` feature maps."""
    from torch import nn

    from .nn import CARAFEPack

    if name in ("nearest", "bilinear"):
        return nn.Upsample(scale_factor=SCALE, mode=name)
    if name == "deconv":
        return nn.ConvTranspose2d(channels, channels, 2 * SCALE, stride=SCALE, padding=SCALE // 2)
    if name == "pixel shuffle":
        return nn.Sequential(
            nn.Conv2d(channels, channels * SCALE * SCALE, 3, padding=1), nn.PixelShuffle(SCALE)
        )
    if name == "carafe":
        # mmcv's defaults (k_up=5, k_encoder=3), with the compressor sized to this network.
        return CARAFEPack(
            channels, SCALE, up_kernel=CARAFE_KERNEL, compressed_channels=channels // 2
        )
    raise ValueError(f"demo: unknown upsampler {name!r}; expected one of {', '.join(UPSAMPLERS)}")


def build_network(upsampler_name: str, width: int, seed: int) -> Any:
    from torch import nn
    from torch.nn import functional as F

    class UpsamplingNetwork(nn.Module):
        """encoder (low-res) -> upsampler -> head (high-res), added to a bicubic skip."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(
                nn.Conv2d(1, width, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.ReLU(),
            )
            # One conv at high resolution: what it can fix of the upsampler's output is little.
            self.head = nn.Conv2d(width, 1, 3, padding=1)
            # The upsampler draws from its own seed so the shared layers start identical.
            import torch

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1)
                self.upsample = make_upsampler(upsampler_name, width)

        def forward(self, low: Any) -> Any:
            skip = F.interpolate(low, scale_factor=SCALE, mode="bicubic", align_corners=False)
            return skip + self.head(self.upsample(self.encoder(low)))

    import torch

    torch.manual_seed(seed)
    return UpsamplingNetwork()


def parameter_count(module: Any) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


# ---------------------------------------------------------------- training and evaluation


def _progress(total: int, description: str, enabled: bool) -> Any:
    """tqdm when installed, otherwise a line every tenth of the run."""
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=description, leave=False, file=sys.stderr)
        except ImportError:
            pass
    return _PlainProgress(total, description, enabled)


class _PlainProgress:
    def __init__(self, total: int, description: str, enabled: bool) -> None:
        self.total, self.description, self.enabled = total, description, enabled
        self.done = 0
        self.postfix = ""

    def update(self, count: int = 1) -> None:
        step = max(1, self.total // 10)
        before, self.done = self.done, self.done + count
        if self.enabled and (self.done // step > before // step or self.done == self.total):
            print(
                f"  {self.description}: {self.done}/{self.total} {self.postfix}",
                file=sys.stderr,
                flush=True,
            )

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        pass


def evaluate(network: Any, held_out: dict[str, Any]) -> dict[str, float]:
    import torch

    network.eval()
    with torch.no_grad():
        scores = {name: psnr(network(downsample(image)), image) for name, image in held_out.items()}
    network.train()
    return scores


def train_and_evaluate(
    name: str,
    train_images: list[np.ndarray],
    held_out: dict[str, Any],
    config: DemoConfig,
    device: Any,
) -> UpsamplerResult:
    import torch

    network = build_network(name, config.width, config.seed).to(device)
    # eps far below every gradient: CARAFEPack starts its mask encoder at std 0.001, and
    # its gradients (~1e-9) would otherwise be damped by the default eps (1e-8).
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate, eps=1e-15)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps)
    losses: list[float] = []
    curve: list[tuple[int, float]] = []
    bar = _progress(config.steps, name, config.progress)
    train_seconds = 0.0
    for step, batch in enumerate(training_batches(train_images, config), start=1):
        high = torch.from_numpy(batch).to(device)
        started = time.perf_counter()
        loss = torch.nn.functional.mse_loss(network(downsample(high)), high)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))  # also waits for the GPU, so the timing is real
        train_seconds += time.perf_counter() - started
        if step % config.eval_every == 0 or step == config.steps:
            curve.append((step, float(np.mean(list(evaluate(network, held_out).values())))))
            bar.set_postfix_str(f"held-out PSNR {curve[-1][1]:.2f} dB")
        bar.update()
    bar.close()

    scores = evaluate(network, held_out)
    first = next(iter(held_out.values()))
    crop = centre_crop(first, SAMPLE_SIZE)
    with torch.no_grad():
        network.eval()
        sample = network(downsample(crop)).clamp(0, 1)[0, 0].cpu().numpy()
        kernel_peak = None
        if name == "carafe":
            low = downsample(first)
            upsampler = network.upsample
            logits = upsampler.content_encoder(upsampler.channel_compressor(network.encoder(low)))
            kernel_peak = float(upsampler.kernel_normalizer(logits).max(dim=1).values.mean())
    return UpsamplerResult(
        name=name,
        kernel_peak=kernel_peak,
        upsampler_parameters=parameter_count(network.upsample),
        total_parameters=parameter_count(network),
        train_seconds=train_seconds,
        held_out_psnr=scores,
        loss_curve=losses,
        psnr_curve=curve,
        sample=sample,
    )


def bicubic_psnr(held_out: dict[str, Any]) -> dict[str, float]:
    """The no-network reference: bicubic interpolation of the input."""
    import torch.nn.functional as F

    return {
        name: psnr(
            F.interpolate(downsample(image), scale_factor=SCALE, mode="bicubic"),
            image,
        )
        for name, image in held_out.items()
    }


# ---------------------------------------------------------------- reporting


def format_table(results: list[UpsamplerResult], reference: dict[str, float]) -> str:
    names = list(reference)
    header = (
        "| upsampler | upsampler params | total params | "
        + " | ".join(f"{name} PSNR" for name in names)
        + " | mean PSNR | train time |"
    )
    lines = [header, "|" + " --- |" * (5 + len(names))]
    ranked = sorted(results, key=lambda result: result.mean_psnr, reverse=True)
    for result in ranked:
        cells = " | ".join(f"{result.held_out_psnr[name]:.2f} dB" for name in names)
        lines.append(
            f"| {result.name} | {result.upsampler_parameters:,} | {result.total_parameters:,} | "
            f"{cells} | {result.mean_psnr:.2f} dB | {result.train_seconds:.1f} s |"
        )
    cells = " | ".join(f"{reference[name]:.2f} dB" for name in names)
    mean = float(np.mean(list(reference.values())))
    lines.append(f"| (bicubic, no network) | 0 | 0 | {cells} | {mean:.2f} dB | - |")
    return "\n".join(lines)


def _per_image_standing(carafe: UpsamplerResult, other: UpsamplerResult) -> str:
    """Whether CARAFE is ahead of ``other`` on every held-out photograph, none, or some."""
    ahead = [
        name for name, value in carafe.held_out_psnr.items() if value > other.held_out_psnr[name]
    ]
    if len(ahead) == len(carafe.held_out_psnr):
        return f"ahead of {other.name} on every held-out photograph"
    if not ahead:
        return f"behind {other.name} on every held-out photograph"
    return f"ahead of {other.name} only on {', '.join(ahead)}"


def last_interval_gain(result: UpsamplerResult) -> float:
    """Held-out PSNR gained between the last two evaluations."""
    if len(result.psnr_curve) < 2:
        return 0.0
    return result.psnr_curve[-1][1] - result.psnr_curve[-2][1]


def summarize(results: list[UpsamplerResult], reference: dict[str, float]) -> list[str]:
    """The conclusion, phrased from the numbers: ranking, gaps, per-image standing, kernels."""
    ranked = sorted(results, key=lambda result: result.mean_psnr, reverse=True)
    best = ranked[0]
    reference_mean = float(np.mean(list(reference.values())))
    lines = [
        "ranking by mean held-out PSNR: "
        + " > ".join(f"{result.name} ({result.mean_psnr:.2f})" for result in ranked)
    ]
    carafe = next((result for result in ranked if result.name == "carafe"), None)
    if carafe is not None and len(ranked) > 1:
        rank = ranked.index(carafe) + 1
        if rank == 1:
            runner = ranked[1]
            lines.append(
                f"CARAFE wins: {carafe.mean_psnr - runner.mean_psnr:.2f} dB above the next "
                f"best ({runner.name}), {_per_image_standing(carafe, runner)}."
            )
        else:
            lines.append(
                f"CARAFE does not win at this budget: it ranks {rank} of {len(ranked)}, "
                f"{best.mean_psnr - carafe.mean_psnr:.2f} dB behind {best.name}, "
                f"{_per_image_standing(carafe, best)}."
            )
            ahead = [result for result in ranked[: rank - 1]]
            lighter = [r for r in ahead if r.upsampler_parameters < carafe.upsampler_parameters]
            if lighter:
                lines.append(
                    "ahead of it with fewer upsampler parameters than its "
                    f"{carafe.upsampler_parameters:,}: "
                    + ", ".join(f"{r.name} ({r.upsampler_parameters:,})" for r in lighter)
                )
        if carafe.kernel_peak is not None:
            uniform = 1 / CARAFE_KERNEL**2
            if carafe.kernel_peak < 0.5:
                shape = (
                    "they still spread their weight over much of the window, so CARAFE's output "
                    "is close to a local average of the low-res features, which smooths away "
                    "the detail this task needs (mmcv's initialisation starts the mask encoder "
                    "at std 0.001, i.e. uniform kernels)"
                )
            else:
                shape = "they have become selective, picking few source pixels per output"
            lines.append(
                f"CARAFE's predicted {CARAFE_KERNEL}x{CARAFE_KERNEL} kernels have a mean peak "
                f"weight of {carafe.kernel_peak:.2f} (uniform {uniform:.2f}, one-hot 1.00): "
                f"{shape}."
            )
        gain = last_interval_gain(carafe)
        if gain >= 0.01 and gain >= max(last_interval_gain(r) for r in results):
            lines.append(
                f"CARAFE was still improving fastest at the end (+{gain:.2f} dB over the last "
                "evaluation interval), so a longer run (--steps) may change the order."
            )
    worst = ranked[-1]
    if worst.mean_psnr > reference_mean:
        lines.append(
            f"every network beats bicubic interpolation of the input, by "
            f"{worst.mean_psnr - reference_mean:+.2f} ({worst.name}) to "
            f"{best.mean_psnr - reference_mean:+.2f} dB ({best.name})"
        )
    else:
        behind = [r.name for r in ranked if r.mean_psnr <= reference_mean]
        lines.append(
            f"not better than bicubic interpolation of the input ({reference_mean:.2f} dB) at "
            f"this budget: {', '.join(behind)}"
        )
    return lines


def plot_curves(results: list[UpsamplerResult], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), layout="constrained")
    loss_axes, psnr_axes = figure.subplots(1, 2)
    for result in results:
        losses = np.asarray(result.loss_curve)
        window = max(1, len(losses) // 20)
        smoothed = np.convolve(losses, np.ones(window) / window, mode="valid")
        loss_axes.plot(np.arange(window, len(losses) + 1), smoothed, label=result.name)
        steps, values = zip(*result.psnr_curve)
        psnr_axes.plot(steps, values, marker="o", label=result.name)
    loss_axes.set(xlabel="step", ylabel="training MSE (moving average)", yscale="log")
    loss_axes.set_title("training loss")
    psnr_axes.set(xlabel="step", ylabel="PSNR (dB)")
    psnr_axes.set_title("held-out PSNR")
    psnr_axes.legend()
    figure.savefig(path, dpi=110)


def plot_reconstructions(
    results: list[UpsamplerResult],
    crop: np.ndarray,
    low: np.ndarray,
    bicubic: np.ndarray,
    path: Path,
) -> None:
    from matplotlib.figure import Figure

    def crop_psnr(image: np.ndarray) -> float:
        error = float(np.mean((np.clip(image, 0, 1) - crop) ** 2))
        return 10 * math.log10(1 / max(error, 1e-12))

    panels = [("ground truth", crop), ("input (low-res)", low), ("bicubic", bicubic)]
    panels += [(result.name, result.sample) for result in results]
    figure = Figure(figsize=(2.4 * len(panels), 2.9), layout="constrained")
    for axes, (title, image) in zip(figure.subplots(1, len(panels)), panels):
        axes.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if image.shape == crop.shape and title != "ground truth":
            title = f"{title}\n{crop_psnr(image):.2f} dB"
        axes.set_title(title, fontsize=9)
        axes.axis("off")
    figure.savefig(path, dpi=110)


# ---------------------------------------------------------------- entry point


def pick_device(requested: str) -> Any:
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("demo: device 'cuda' was requested but torch sees no CUDA GPU")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"demo: device must be auto, cpu or cuda, got {requested!r}")
    return device


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> list[UpsamplerResult]:
    """Train and evaluate every upsampler; write the plots and results to ``config.out_dir``."""
    config.validate()
    _require_demo_packages()
    import torch

    from ._torch_ops import backend_name

    torch.set_num_threads(config.threads)
    torch.set_flush_denormal(True)  # tiny Adam moments must not fall onto the slow path
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    device = pick_device(config.device)

    train_images = [load_luminance(name) for name in TRAIN_IMAGES]
    held_out = {}
    for name in HELD_OUT_IMAGES:
        image = load_luminance(name)
        if config.held_out_size is not None:
            image = np.ascontiguousarray(centre_crop(image, config.held_out_size))
        held_out[name] = torch.from_numpy(image)[None, None].to(device)
    log(
        f"device {device} ({torch.get_num_threads()} CPU threads), CARAFE runs as: "
        f"{backend_name(device)}; seed {config.seed}"
    )
    log(
        f"training on {config.steps} batches of {config.batch_size} {config.patch_size}x"
        f"{config.patch_size} patches from {', '.join(TRAIN_IMAGES)}; "
        f"held-out photographs: {', '.join(HELD_OUT_IMAGES)}"
        + (
            f" (centre {config.held_out_size}x{config.held_out_size})"
            if config.held_out_size
            else ""
        )
    )

    results = []
    for name in config.upsamplers:
        results.append(train_and_evaluate(name, train_images, held_out, config, device))
    reference = bicubic_psnr(held_out)

    log("")
    log(format_table(results, reference))
    log("")
    for line in summarize(results, reference):
        log(line)

    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_curves(results, out_dir / "training_curves.png")
    crop = centre_crop(next(iter(held_out.values())), SAMPLE_SIZE)
    low = downsample(crop)
    bicubic = torch.nn.functional.interpolate(low, scale_factor=SCALE, mode="bicubic")
    plot_reconstructions(
        results,
        crop[0, 0].cpu().numpy(),
        low[0, 0].cpu().numpy(),
        bicubic.clamp(0, 1)[0, 0].cpu().numpy(),
        out_dir / "reconstructions.png",
    )
    record = {
        "config": {**asdict(config), "out_dir": str(config.out_dir), "device": str(device)},
        "threads": torch.get_num_threads(),
        "carafe_backend": backend_name(device),
        "bicubic_psnr": reference,
        "results": [
            {key: value for key, value in asdict(result).items() if key != "sample"}
            for result in results
        ],
    }
    (out_dir / "results.json").write_text(json.dumps(record, indent=2))
    (out_dir / "results.md").write_text(format_table(results, reference) + "\n")
    log(f"\nwrote training_curves.png, reconstructions.png, results.json to {out_dir}")
    return results
