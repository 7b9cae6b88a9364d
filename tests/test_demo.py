"""``python -m carafe_cupy demo``: the segmentation comparison over seeds, its statistics,
CARAFE's kernel peaks, its report and its figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from carafe_cupy.demo import UPSAMPLERS, DemoConfig, run_demo
from carafe_cupy.demo.metrics import boundary_f_score, confusion, iou_per_class, scores
from carafe_cupy.demo.model import (
    CARAFE_KERNEL,
    CARAFE_SETTINGS,
    SegmentationNetwork,
    carafe_kernel_peaks,
)
from carafe_cupy.demo.report import (
    format_paired,
    format_table,
    paired_differences,
    summarize,
    summarize_upsamplers,
)
from carafe_cupy.demo.scenes import CLASSES, make_scenes
from carafe_cupy.demo.stats import mean_interval, paired_interval, t_quantile
from carafe_cupy.demo.train import UpsamplerResult
from carafe_cupy.nn import CARAFEPack

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UNIFORM = 1 / CARAFE_KERNEL**2


def test_quick_demo_trains_every_upsampler_from_every_seed_and_writes_its_outputs(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "carafe_cupy", "demo", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for name in UPSAMPLERS:
        assert f"| {name} |" in out
    assert "| upsampler | mIoU (%) | mIoU sd | boundary F1 (±1 px) (%)" in out
    assert "over 2 seeds" in out and "95% t-interval" in out
    assert "| CARAFE minus | mIoU (points) [95% CI]" in out
    assert "ranking by mean mIoU" in out and "CARAFE ranks" in out  # win or lose
    assert "CARAFE's kernel peak" in out and "at initialisation" in out
    assert "\r" not in result.stderr and "it/s" not in result.stderr  # no bars in a log
    for figure in ("segmentations.png", "training_curves.png", "scores.png"):
        data = (tmp_path / figure).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000, figure

    record = json.loads((tmp_path / "results.json").read_text())
    config = record["config"]
    assert config["seeds"] == 2 and record["carafe_settings"] == CARAFE_SETTINGS
    assert record["classes"] == list(CLASSES) and record["wall_seconds"] > 0
    runs = record["runs"]
    assert [(r["seed"], r["name"]) for r in runs] == [
        (seed, name) for seed in (0, 1) for name in UPSAMPLERS
    ]
    for run in runs:
        assert len(run["loss_curve"]) == config["steps"]
        assert all(math.isfinite(value) for value in run["loss_curve"])
        assert all(0 <= value <= 1 for value in run["scores"].values())
        assert len(run["per_scene_miou"]) == config["test_scenes"]
        assert (run["kernel_peak_curve"] is None) == (run["name"] != "carafe")
    aggregate = record["aggregate"]["upsamplers"]
    for name in UPSAMPLERS:  # the aggregate is the t-interval of the per-seed scores
        per_seed = [r["scores"]["miou"] for r in runs if r["name"] == name]
        miou = aggregate[name]["scores"]["miou"]
        expected = mean_interval(per_seed)
        assert miou["n"] == 2 and aggregate[name]["per_seed_miou"] == per_seed
        assert miou["mean"] == pytest.approx(expected.mean)
        assert (miou["ci_low"], miou["ci_high"]) == pytest.approx((expected.low, expected.high))
        assert ("kernel_peak" in aggregate[name]) == (name == "carafe")
    for layer in aggregate["carafe"]["kernel_peak"].values():
        assert layer["initial"]["mean"] == pytest.approx(UNIFORM, abs=2e-3)  # mmcv's init
        assert UNIFORM <= layer["trained"]["mean"] <= 1
    assert set(record["aggregate"]["carafe_minus"]) == set(UPSAMPLERS) - {"carafe"}
    parameters = {name: entry["upsampler_parameters"] for name, entry in aggregate.items()}
    assert parameters["nearest"] == parameters["bilinear"] == 0
    assert parameters["carafe"] > parameters["pixel shuffle"] > parameters["deconv"] > 0


def test_demo_results_repeat_and_do_not_depend_on_the_worker_count(tmp_path):
    settings = dict(steps=3, seeds=2, upsamplers=("carafe", "deconv"), progress=False)
    runs = []
    for jobs in (1, 2):
        config = DemoConfig.quick(out_dir=tmp_path / str(jobs), jobs=jobs, **settings)
        summaries = run_demo(config, log=id)
        runs.append([run for summary in summaries for run in summary.runs])
    for first, second in zip(*runs):
        assert (first.name, first.seed) == (second.name, second.seed)
        assert first.loss_curve == second.loss_curve
        assert first.scores == second.scores
        assert first.kernel_peak_curve == second.kernel_peak_curve
    carafe = [run for run in runs[0] if run.name == "carafe"]
    assert carafe[0].loss_curve != carafe[1].loss_curve  # the seeds differ


@pytest.mark.parametrize(
    "settings",
    [
        {"steps": 0},
        {"image_size": 36},
        {"upsamplers": ("carafe", "lanczos")},
        {"threads": 0},
        {"seeds": 1},
        {"jobs": -1},
    ],
)
def test_demo_rejects_bad_settings(settings):
    with pytest.raises(ValueError, match=next(iter(settings))):
        DemoConfig(**settings).validate()


def test_demo_cli_reports_bad_settings_without_a_traceback(tmp_path):
    for option, message in (("--steps", "steps must be"), ("--seeds", "seeds must be")):
        result = subprocess.run(
            [sys.executable, "-m", "carafe_cupy", "demo", option, "0", "--out", str(tmp_path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert result.returncode == 2
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_the_demo_uses_carafepack_with_the_paper_settings():
    network = SegmentationNetwork("carafe", 24, len(CLASSES), seed=0)
    reference = CARAFEPack(24, 2)  # the defaults: k_up 5, k_encoder 3, 64 channels, 1 group
    for pack in (network.up1, network.up2):
        assert isinstance(pack, CARAFEPack)
        assert (pack.up_kernel, pack.encoder_kernel, pack.compressed_channels, pack.up_group) == (
            reference.up_kernel,
            reference.encoder_kernel,
            reference.compressed_channels,
            reference.up_group,
        )
        assert pack.scale_factor == 2
        encoder_std = float(pack.content_encoder.weight.detach().std())
        assert encoder_std == pytest.approx(0.001, rel=0.1)  # mmcv's initialisation
        assert not pack.content_encoder.bias.any()


def test_kernel_peak_is_uniform_at_initialisation_and_one_for_one_hot_kernels():
    images = torch.from_numpy(make_scenes(2, 32, seed=5)[0])
    network = SegmentationNetwork("carafe", 16, len(CLASSES), seed=0).train()
    peaks = carafe_kernel_peaks(network, images)
    assert len(peaks) == 2 and peaks == pytest.approx([UNIFORM] * 2, abs=2e-3)
    assert network.training  # its mode is put back
    for pack in (network.up1, network.up2):  # every sub-pixel picks tap 0
        with torch.no_grad():
            pack.content_encoder.weight.zero_()
            pack.content_encoder.bias.view(CARAFE_KERNEL**2, -1)[0] = 50.0
    assert carafe_kernel_peaks(network, images) == pytest.approx([1.0, 1.0])
    assert carafe_kernel_peaks(SegmentationNetwork("bilinear", 16, 4, 0), images) is None


def test_t_intervals():
    for df, quantile in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)):
        assert t_quantile(0.95, df) == pytest.approx(quantile, abs=1e-4)
    assert t_quantile(0.99, 5) == pytest.approx(4.0321, abs=1e-4)
    interval = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (interval.mean, interval.n) == (3.0, 5)
    assert interval.sd == pytest.approx(math.sqrt(2.5))
    assert interval.half_width == pytest.approx(2.7764 * math.sqrt(2.5) / math.sqrt(5), 1e-4)
    assert interval.low < 3 < interval.high
    paired = paired_interval([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])  # always 0.1 higher
    assert paired.mean == pytest.approx(0.1) and paired.half_width == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="at least two"):
        mean_interval([1.0])
    with pytest.raises(ValueError, match="differ"):
        paired_interval([1.0, 2.0], [1.0])


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 8, 17, 40):
        for confidence in (0.8, 0.95, 0.99):
            expected = stats.t.ppf((1 + confidence) / 2, df)
            assert t_quantile(confidence, df) == pytest.approx(expected, rel=1e-9)


def test_scenes_are_seeded_and_hold_every_class():
    images, labels = make_scenes(16, 32, seed=3)
    again, labels_again = make_scenes(16, 32, seed=3)
    assert np.array_equal(images, again) and np.array_equal(labels, labels_again)
    assert images.shape == (16, 3, 32, 32) and labels.shape == (16, 32, 32)
    assert set(np.unique(labels)) == set(range(len(CLASSES)))
    assert not np.array_equal(make_scenes(16, 32, seed=4)[1], labels)


def test_scores_on_known_maps():
    truth = np.zeros((8, 8), dtype=np.int64)
    truth[2:6, 2:6] = 1
    perfect = scores(truth, truth, 2)
    assert perfect == {
        "miou": 1.0,
        "pixel_accuracy": 1.0,
        "boundary_f": 1.0,
        "near_boundary_accuracy": 1.0,
    }
    shifted = np.roll(truth, 1, axis=1)  # one column off: boundaries still within 1 px
    assert boundary_f_score(shifted, truth, tolerance=1) == 1.0
    assert boundary_f_score(np.roll(truth, 3, axis=1), truth, tolerance=1) < 1.0
    iou = iou_per_class(confusion(shifted, truth, 2))
    assert iou[1] == pytest.approx(12 / 20)  # 12 shared pixels, 20 in the union
    assert iou[0] == pytest.approx(44 / 52)


def _runs(name: str, mious: list[float], boundary: float) -> list[UpsamplerResult]:
    return [
        UpsamplerResult(
            name=name,
            seed=seed,
            upsampler_parameters=0 if name != "carafe" else 500,
            total_parameters=1000,
            train_seconds=1.0,
            scores={
                "miou": miou,
                "pixel_accuracy": 0.9,
                "boundary_f": boundary + 0.01 * seed,
                "near_boundary_accuracy": 0.8,
            },
            loss_curve=[1.0, 0.5],
            per_scene_miou=[miou],
            kernel_peak_curve=[[0, 0.04, 0.04], [2, 0.5 + 0.1 * seed, 0.7]]
            if name == "carafe"
            else None,
        )
        for seed, miou in enumerate(mious)
    ]


def _report(results: list[UpsamplerResult], names: tuple[str, ...]) -> str:
    summaries = summarize_upsamplers(results, names)
    differences = paired_differences(summaries)
    return "\n".join(
        [format_table(summaries), format_paired(differences), *summarize(summaries, differences, 2)]
    )


def test_summary_verdict_follows_the_paired_intervals():
    names = ("nearest", "deconv", "carafe")
    winning = (
        _runs("carafe", [0.80, 0.70, 0.90], 0.6)
        + _runs("nearest", [0.70, 0.61, 0.79], 0.5)  # 0.09 to 0.11 below CARAFE: significant
        + _runs("deconv", [0.85, 0.60, 0.88], 0.5)  # above on one seed: spans 0
    )
    text = _report(winning, names)
    assert "CARAFE ranks 1 of 3 by mean mIoU" in text
    assert "its mIoU is higher than nearest; not distinguishable from deconv" in text
    assert "| nearest | +10.0 [+7.5, +12.5] | +10.0 [+10.0, +10.0] | 3 of 3 | higher |" in text
    assert "| carafe | 80.0 ± 24.8 | 10.0 |" in text  # mean ± t(2) * sd / sqrt(3), sd
    assert "CARAFE's mIoU is higher on 2 of 3 seeds" in text  # against deconv
    assert "1/4→1/2 layer 0.040 at initialisation, 0.600 ± 0.248 after 2 steps" in text
    assert f"uniform {UNIFORM:.2f}" in text

    losing = _runs("carafe", [0.6, 0.7, 0.5], 0.4) + _runs("nearest", [0.7, 0.8, 0.6], 0.5)
    text = _report(losing, ("nearest", "carafe"))
    assert "CARAFE ranks 2 of 2 by mean mIoU" in text
    assert "its mIoU is lower than nearest" in text
    assert "ranking by mean boundary F1: nearest (51.0 ± 2.5) > carafe (41.0 ± 2.5)" in text


def test_segmentation_figure_has_a_legend_and_no_label_under_the_row_above(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from carafe_cupy.demo import figures

    images, truth = make_scenes(3, 32, seed=1)
    results = [
        UpsamplerResult(name, 0, 0, 0, 1.0, {}, [1.0], [], predictions=np.roll(truth, 1, -1))
        for name in UPSAMPLERS
    ]
    kept = []
    monkeypatch.setattr(plt, "close", kept.append)
    figures.plot_segmentations(results, images, truth, tmp_path / "segmentations.png")
    assert (tmp_path / "segmentations.png").read_bytes().startswith(PNG_SIGNATURE)
    (fig,) = kept
    labels = [text.get_text() for legend in fig.legends for text in legend.get_texts()]
    assert labels[: len(CLASSES)] == list(CLASSES)
    assert "wrongly classed pixel" in labels
    fig.canvas.draw()  # the text extents at the figure's own dpi
    renderer = fig.canvas.get_renderer()
    axes = np.array(fig.axes).reshape(3, -1)
    for row in range(2):
        for above, below in zip(axes[row, 2:], axes[row + 1, 2:]):  # the predictions
            label = above.xaxis.label.get_window_extent(renderer)  # "3.1% wrong"
            assert below.get_title() == ""  # names only over the top row
            assert label.y0 > below.get_window_extent(renderer).y1
            assert label.y1 < above.get_window_extent(renderer).y0
    legend = fig.legends[0].get_window_extent(renderer)
    assert legend.y1 < min(ax.xaxis.label.get_window_extent(renderer).y0 for ax in axes[-1, 2:])
    plt.close(fig)
