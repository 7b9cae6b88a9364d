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



@pytest.mark.parametrize("simulator", ["", "1"])
def test_check_names_the_simulator_when_the_cupy_path_is_not_checked(monkeypatch, simulator):
    pytest.importorskip("torch")
    from carafe_cupy._cli import check as _check
    from carafe_cupy._runtime import cupy_runtime as _cupy_runtime

    monkeypatch.setattr(_cupy_runtime, "gpu_kernels_available", lambda device=None: False)
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", simulator)
    _, notes = _check.available_backends()
    (note,) = [note for note in notes if "the CuPy path was not checked" in note]
    if simulator:
        assert "were checked on the CPU simulator instead" in note
    else:
        assert "CARAFE_CUPY_SIMULATOR=1 python -m carafe_cupy check" in note
        assert "same CUDA kernels on the CPU simulator" in note


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
    # numpy has no bfloat16: those rows are skipped and counted as such, not as passes
    assert "| numpy (kernels on the simulator) | bfloat16 |" in result.stdout
    assert " 0 skipped" not in result.stdout


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
    assert "CPU-only build" in output


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "carafe_cupy", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, **env),
        timeout=300,
    )


def test_help_texts_are_plain_and_document_every_option():
    top = _cli("--help")
    assert top.returncode == 0 and "`" not in top.stdout
    for command in ("check", "demo"):
        text = _cli(command, "--help").stdout
        assert "--seed SEED" in text
        seed_help = " ".join(text.rsplit("--seed SEED", 1)[1].split("--", 1)[0].split())
        assert "seed" in seed_help and "default 0" in seed_help


def test_info_says_what_is_missing_for_cupy_arrays():
    from carafe_cupy._cli import check as _check
    from carafe_cupy._runtime import cupy_runtime as _cupy_runtime

    line = _check.cupy_arrays_line()
    if _cupy_runtime.gpu_kernels_available():
        assert line == "cuda kernels"
    elif _cupy_runtime.cupy_import_error() == "not installed":
        assert "CuPy is not installed" in line and "CARAFE_CUPY_SIMULATOR=1" in line
    elif not _cupy_runtime.cupy_importable():  # installed, but its import fails: say why
        assert "CuPy is installed but CuPy could not be imported" in line
    else:
        assert "CuPy is installed but sees no CUDA GPU" in line or "NVRTC" in line
    assert "no GPU/CuPy" not in _cli("info").stdout


def test_check_counts_skips_apart_from_passes():
    from carafe_cupy._cli.check import CheckResult, summary_lines

    results = [
        CheckResult("numpy", "float32", (1,), 0.0, "pass"),
        CheckResult("numpy", "bfloat16", (1,), float("nan"), "skipped", "numpy has no bfloat16"),
        CheckResult("numpy", "float16", (1,), 1.0, "FAIL"),
    ]
    assert summary_lines(results) == ["1 passed, 1 skipped, 1 failed (of 3; backends: numpy)"]


def test_check_without_any_backend_says_what_to_install():
    result = run_python(
        """
        import sys
        sys.modules["torch"] = None
        from carafe_cupy.__main__ import main
        sys.exit(main(["check"]))
        """
    )
    assert result.returncode == 1
    assert "nothing was checked" in result.stdout
    assert "PyTorch's CPU-only build" in result.stdout
    assert "CARAFE_CUPY_SIMULATOR=1 python -m carafe_cupy check" in result.stdout


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda nn: nn.CARAFE(5, 1, 2.0), "CARAFE: scale_factor must be an int"),
        (lambda nn: nn.CARAFEPack(16, 2.0), "CARAFEPack: scale_factor must be an int"),
        (lambda nn: nn.CARAFEPack(16, 2, up_kernel=5.0), "CARAFEPack: up_kernel must be an int"),
        (lambda nn: nn.CARAFEPack(16, 2, up_group=3), "CARAFEPack: up_group (3) must divide"),
        (lambda nn: nn.CARAFEPack(16, 2, encoder_kernel=2), "CARAFEPack: encoder_kernel must"),
        (lambda nn: nn.CARAFEPack(16.0, 2), "CARAFEPack: channels must be an int"),
    ],
)
def test_constructors_name_the_module_and_argument(build, message):
    pytest.importorskip("torch")
    from carafe_cupy import nn

    with pytest.raises((TypeError, ValueError)) as error:
        build(nn)
    assert str(error.value).startswith(message)


def test_docstrings_document_semantics_and_arguments():
    pytest.importorskip("torch")
    import carafe_cupy

    doc = carafe_cupy.carafe.__doc__
    for needle in ("g*k*k + i*k + j", "not normalised", "contribute zero", "bfloat16", "float16"):
        assert needle in doc
    pack = carafe_cupy.CARAFEPack.__doc__
    for argument in (
        "channels",
        "scale_factor",
        "up_kernel",
        "up_group",
        "encoder_kernel",
        "encoder_dilation",
        "compressed_channels",
    ):
        assert f"{argument}:" in pack
