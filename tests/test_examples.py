"""The entry points users start from: the demo, the notebook, the CuPy pipeline."""

from __future__ import annotations

import json
import math
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from carafe_cupy import _cupy_runtime
from carafe_cupy.demo import (
    CARAFE_KERNEL,
    UPSAMPLERS,
    DemoConfig,
    UpsamplerResult,
    run_demo,
    summarize,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- demo


def test_quick_demo_trains_every_upsampler_and_writes_its_outputs(tmp_path):
    pytest.importorskip("torch")
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
    assert "ranking by mean held-out PSNR" in result.stdout
    assert "CARAFE" in result.stdout  # the verdict names it, win or lose
    for figure in ("training_curves.png", "reconstructions.png"):
        data = (tmp_path / figure).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, figure
    record = json.loads((tmp_path / "results.json").read_text())
    assert [entry["name"] for entry in record["results"]] == list(UPSAMPLERS)
    assert record["threads"] >= 1
    for entry in record["results"]:
        assert all(math.isfinite(value) for value in entry["loss_curve"])
        # Better than a constant grey guess by a wide margin, so the network really ran.
        assert min(entry["held_out_psnr"].values()) > 20
        assert entry["psnr_curve"][-1][0] == record["config"]["steps"]
    parameters = {entry["name"]: entry["upsampler_parameters"] for entry in record["results"]}
    assert parameters["nearest"] == parameters["bilinear"] == 0
    assert parameters["carafe"] > 0 and parameters["pixel shuffle"] > parameters["deconv"]


def test_demo_is_reproducible(tmp_path):
    pytest.importorskip("torch")
    config = dict(steps=4, eval_every=2, width=8, held_out_size=96, upsamplers=("carafe", "deconv"))
    runs = [
        run_demo(DemoConfig(out_dir=tmp_path / str(index), progress=False, **config), log=id)
        for index in range(2)
    ]
    for first, second in zip(*runs):
        assert first.loss_curve == second.loss_curve
        assert first.held_out_psnr == second.held_out_psnr


@pytest.mark.parametrize(
    "settings",
    [{"steps": 0}, {"patch_size": 31}, {"upsamplers": ("carafe", "lanczos")}, {"threads": 0}],
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


def _result(name: str, psnr_by_image: dict[str, float], parameters: int) -> UpsamplerResult:
    mean = float(np.mean(list(psnr_by_image.values())))
    return UpsamplerResult(
        name=name,
        upsampler_parameters=parameters,
        total_parameters=parameters + 100,
        train_seconds=1.0,
        held_out_psnr=psnr_by_image,
        loss_curve=[1e-3, 9e-4],
        psnr_curve=[(1, mean - 0.1), (2, mean)],
        kernel_peak=0.6 if name == "carafe" else None,
    )


def test_summary_verdict_follows_the_ranking():
    reference = {"a": 30.0, "b": 28.0}
    winning = [
        _result("carafe", {"a": 31.0, "b": 29.0}, 500),
        _result("nearest", {"a": 30.5, "b": 28.8}, 0),
    ]
    text = "\n".join(summarize(winning, reference))
    assert "CARAFE wins: 0.35 dB above the next best (nearest)" in text
    assert "ahead of nearest on every held-out photograph" in text
    assert f"{CARAFE_KERNEL}x{CARAFE_KERNEL} kernels have a mean peak weight of 0.60" in text

    losing = [
        _result("carafe", {"a": 30.2, "b": 28.9}, 500),
        _result("nearest", {"a": 30.5, "b": 28.8}, 0),
    ]
    text = "\n".join(summarize(losing, reference))
    assert "CARAFE does not win at this budget: it ranks 2 of 2" in text
    assert "ahead of nearest only on b" in text
    assert "nearest (0)" in text  # fewer parameters than CARAFE and still ahead


# ---------------------------------------------------------------- notebook


NOTEBOOK = EXAMPLES / "carafe_quickstart.ipynb"


def test_notebook_is_committed_without_outputs():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import nbclient
    import nbformat

    # the kernel imports this checkout's carafe_cupy, installed or not
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    )

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    figures = sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "gradcheck: True" in printed
    assert "forward + backward" in printed
    assert figures >= 2


# ---------------------------------------------------------------- CuPy pipeline


PIPELINE = EXAMPLES / "cupy_pipeline.py"

# Runs the script with torch unimportable, and reports every attempt to import it.
NO_TORCH_RUNNER = textwrap.dedent(
    """
    import importlib.abc, runpy, sys

    attempts = []

    class RefuseTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                attempts.append(name)
                raise ModuleNotFoundError(f"torch is blocked in this test: {name}")
            return None

    sys.meta_path.insert(0, RefuseTorch())
    status = 0
    try:
        runpy.run_path(sys.argv[1], run_name="__main__")
    except SystemExit as exit_:
        status = exit_.code
    finally:
        print(f"torch import attempts: {attempts}", file=sys.stderr)
    sys.exit(status)
    """
)


def test_cupy_pipeline_never_imports_torch_and_explains_a_missing_gpu():
    environment = {k: v for k, v in os.environ.items() if k != "CARAFE_CUPY_SIMULATOR"}
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_RUNNER, str(PIPELINE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=300,
    )
    assert "torch import attempts: []" in result.stderr, result.stderr
    if _cupy_runtime.gpu_kernels_available():
        assert result.returncode == 0, result.stdout + result.stderr
        assert "torch imported: no" in result.stdout
        assert "not the default stream: True" in result.stdout
    else:
        assert result.returncode == 2, result.stdout + result.stderr
        assert "CARAFE_CUPY_SIMULATOR=1" in result.stderr
        assert "Traceback" not in result.stderr


def test_cupy_pipeline_math_with_numpy_arrays(monkeypatch, capsys):
    """The pipeline's masks, softmax backward and fitting, with a numpy CARAFE in place."""
    import carafe_cupy
    from carafe_cupy._check import numpy_reference

    def forward(features, masks, kernel_size, group_size, scale_factor):
        n, c, h, w = features.shape
        grad_output = np.zeros((n, c, h * scale_factor, w * scale_factor))
        return numpy_reference(features, masks, grad_output, kernel_size, group_size, scale_factor)[
            0
        ]

    def backward(grad_output, features, masks, kernel_size, group_size, scale_factor):
        return numpy_reference(features, masks, grad_output, kernel_size, group_size, scale_factor)[
            1:
        ]

    monkeypatch.setattr(carafe_cupy, "carafe", forward)
    monkeypatch.setattr(carafe_cupy, "carafe_backward", backward)
    pipeline = runpy.run_path(str(PIPELINE), run_name="cupy_pipeline")
    assert pipeline["run_pipeline"](pipeline["_numpy_backend"](np)) is True
    printed = capsys.readouterr().out
    assert "relative error" in printed and "FAILED" not in printed


def test_cupy_pipeline_runs_on_the_simulator_without_torch():
    """Without a GPU the same script runs the real kernels on numpy arrays."""
    environment = dict(os.environ, CARAFE_CUPY_SIMULATOR="1")
    environment["PYTHONPATH"] = os.pathsep.join(
        path for path in (str(ROOT), environment.get("PYTHONPATH")) if path
    )
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_RUNNER, str(PIPELINE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch import attempts: []" in result.stderr, result.stderr
    assert "backend: numpy (CPU simulator)" in result.stdout
    assert "relative error" in result.stdout and "FAILED" not in result.stdout
