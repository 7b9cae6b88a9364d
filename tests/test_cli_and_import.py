"""The command line, and importing without torch or CuPy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_import_without_torch_or_cupy():
    result = run_python(
        """
        import sys
        sys.modules["torch"] = None  # makes `import torch` fail
        sys.modules["cupy"] = None
        import carafe_cupy
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        try:
            carafe_cupy.carafe([1.0], [1.0], 3, 1, 2)
        except TypeError as error:
            print("TypeError:", error)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "torch.Tensor or cupy.ndarray" in result.stdout


def test_info_reports_backends():
    result = subprocess.run(
        [sys.executable, "-m", "carafe_cupy", "info"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    for field in ("carafe_cupy", "torch", "cupy", "NVRTC", "GPUs", "kernel cache"):
        assert field in result.stdout


def test_check_passes_and_says_what_was_not_checked():
    pytest.importorskip("torch")
    result = subprocess.run(
        [sys.executable, "-m", "carafe_cupy", "check"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout
    assert "| torch cpu | float32 |" in result.stdout
    import torch

    if not torch.cuda.is_available():
        assert "GPU path was not checked" in result.stdout


def test_check_runs_the_kernels_on_the_simulator():
    pytest.importorskip("torch")
    environment = dict(os.environ, CARAFE_CUPY_SIMULATOR="1")
    result = subprocess.run(
        [sys.executable, "-m", "carafe_cupy", "check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| torch cpu (kernels on the simulator) | float16 |" in result.stdout
    assert "| numpy (kernels on the simulator) | float32 |" in result.stdout
    assert " 0 failed" in result.stdout


def test_tests_fail_without_torch_and_say_how_to_install_it():
    result = run_python(
        """
        import sys
        sys.modules["torch"] = None  # as if torch were not installed
        import pytest
        sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--co", "tests/test_golden.py"]))
        """
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "torch is not installed" in output
    assert "--index-url https://download.pytorch.org/whl/cpu" in output
