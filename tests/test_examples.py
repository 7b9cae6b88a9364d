"""The examples users start from: the notebook and the CuPy pipeline (the demo: test_demo.py)."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from carafe_cupy._runtime import cupy_runtime as _cupy_runtime

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- notebook


NOTEBOOK = EXAMPLES / "carafe_quickstart.ipynb"


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
    assert "same as carafe: True" in printed
    assert "Involution: (2, 32, 28, 28) -> (2, 32, 14, 14)" in printed
    assert "CARAFEDownPack: (1, 4, 64, 64) -> (1, 4, 32, 32)" in printed
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
    sys.argv = sys.argv[1:]  # the script and its arguments, as `python script.py ...` sees them
    status = 0
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
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


def _pipeline_without_cupy(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The pipeline with CuPy and torch unimportable."""
    environment = {k: v for k, v in os.environ.items() if k != "CARAFE_CUPY_SIMULATOR"}
    environment["PYTHONPATH"] = os.pathsep.join(
        path for path in (str(ROOT), environment.get("PYTHONPATH")) if path
    )
    runner = 'import sys\nsys.modules["cupy"] = None  # as if CuPy were not installed\n'
    return subprocess.run(
        [sys.executable, "-c", runner + NO_TORCH_RUNNER, str(PIPELINE), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(environment, **env),
        timeout=600,
    )


def test_cupy_pipeline_without_cupy_advises_the_repository_and_the_simulator():
    result = _pipeline_without_cupy()
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    # installed from the clone, not by a package name that no index serves
    assert 'pip install ".[cuda13]"' in result.stderr
    assert "carafe_cupy[" not in result.stderr
    assert "CARAFE_CUPY_SIMULATOR=1 python examples/cupy_pipeline.py" in result.stderr


def test_cupy_pipeline_help():
    result = _pipeline_without_cupy("--help")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--with-torch" in result.stdout
    assert "CARAFE_CUPY_SIMULATOR=1" in result.stdout and 'pip install ".[cuda13]"' in result.stdout
    assert "cupy_pipeline:" not in result.stderr  # help, not an attempt to run


def test_cupy_pipeline_runs_on_the_simulator_without_cupy():
    result = _pipeline_without_cupy(CARAFE_CUPY_SIMULATOR="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backend: numpy (CPU simulator)" in result.stdout
    assert "relative error" in result.stdout and "FAILED" not in result.stdout


def test_cupy_pipeline_math_with_numpy_arrays(monkeypatch, capsys):
    """The pipeline's masks, softmax backward and fitting, with a numpy CARAFE in place."""
    import carafe_cupy
    from carafe_cupy._cli.check import numpy_reference

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
