"""``python -m carafe_cupy demo``: the segmentation comparison, its scores and its report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from carafe_cupy.demo import UPSAMPLERS, DemoConfig, run_demo
from carafe_cupy.demo.metrics import boundary_f_score, confusion, iou_per_class, scores
from carafe_cupy.demo.model import CARAFE_KERNEL
from carafe_cupy.demo.report import summarize
from carafe_cupy.demo.scenes import CLASSES, make_scenes
from carafe_cupy.demo.train import UpsamplerResult

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_quick_demo_trains_every_upsampler_and_writes_its_outputs(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "carafe_cupy", "demo", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in UPSAMPLERS:
        assert f"| {name} |" in result.stdout
    assert "| upsampler | mIoU (%) | boundary F1 (±1 px) (%)" in result.stdout
    assert "ranking by held-out mIoU" in result.stdout
    assert "CARAFE" in result.stdout  # the verdict names it, win or lose
    assert "\r" not in result.stderr and "it/s" not in result.stderr  # no bars in a log
    for figure in ("segmentations.png", "training_curves.png"):
        data = (tmp_path / figure).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000, figure
    record = json.loads((tmp_path / "results.json").read_text())
    assert [entry["name"] for entry in record["results"]] == list(UPSAMPLERS)
    assert record["classes"] == list(CLASSES)
    for entry in record["results"]:
        assert len(entry["loss_curve"]) == record["config"]["steps"]
        assert all(math.isfinite(value) for value in entry["loss_curve"])
        assert all(0 <= value <= 1 for value in entry["scores"].values())
        assert len(entry["per_scene_miou"]) == record["config"]["test_scenes"]
    parameters = {entry["name"]: entry["upsampler_parameters"] for entry in record["results"]}
    assert parameters["nearest"] == parameters["bilinear"] == 0
    assert parameters["carafe"] > 0 and parameters["pixel shuffle"] > parameters["deconv"]


def test_demo_is_reproducible(tmp_path):
    config = dict(steps=3, upsamplers=("carafe", "deconv"), progress=False)
    runs = [
        run_demo(DemoConfig.quick(out_dir=tmp_path / str(index), **config), log=id)
        for index in range(2)
    ]
    for first, second in zip(*runs):
        assert first.loss_curve == second.loss_curve
        assert first.scores == second.scores


@pytest.mark.parametrize(
    "settings",
    [{"steps": 0}, {"image_size": 36}, {"upsamplers": ("carafe", "lanczos")}, {"threads": 0}],
)
def test_demo_rejects_bad_settings(settings):
    with pytest.raises(ValueError, match=next(iter(settings))):
        DemoConfig(**settings).validate()


def test_demo_cli_reports_bad_settings_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "carafe_cupy", "demo", "--steps", "0", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "steps must be a positive integer" in result.stderr
    assert "Traceback" not in result.stderr


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


def _result(name: str, per_scene: list[float], boundary: float) -> UpsamplerResult:
    return UpsamplerResult(
        name=name,
        upsampler_parameters=0 if name != "carafe" else 500,
        total_parameters=1000,
        train_seconds=1.0,
        scores={
            "miou": float(np.mean(per_scene)),
            "pixel_accuracy": 0.9,
            "boundary_f": boundary,
            "near_boundary_accuracy": 0.8,
        },
        loss_curve=[1.0, 0.5],
        per_scene_miou=per_scene,
        kernel_peak=0.6 if name == "carafe" else None,
    )


def test_summary_verdict_follows_the_ranking():
    winning = [_result("carafe", [0.8, 0.7, 0.9], 0.6), _result("nearest", [0.7, 0.72, 0.8], 0.5)]
    text = "\n".join(summarize(winning))
    assert "CARAFE ranks first: 6.0 mIoU points above the next best (nearest)" in text
    assert "its mIoU is higher on 2 of 3 held-out scenes" in text
    assert "boundary F1 +10.0 points" in text
    assert f"{CARAFE_KERNEL}x{CARAFE_KERNEL} kernels have a mean peak weight of 0.60" in text

    losing = [_result("carafe", [0.6, 0.7, 0.5], 0.4), _result("nearest", [0.7, 0.72, 0.8], 0.5)]
    text = "\n".join(summarize(losing))
    assert "CARAFE does not win this run: it ranks 2 of 2" in text
    assert "ranking by boundary F1: nearest (50.0%) > carafe (40.0%)" in text
