"""benchmarks/bench_host_cost.py: a tiny run prints both calls' rows and the ratios,
every launch reaches the stand-in driver, and the environment is left as it was."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_host_cost.py"


@pytest.fixture
def bench(monkeypatch):
    previous = os.environ.get("CARAFE_CUPY_SIMULATOR")
    spec = importlib.util.spec_from_file_location("bench_host_cost", BENCH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_host_cost", module)
    spec.loader.exec_module(module)  # sets CARAFE_CUPY_SIMULATOR=1 for its run
    yield module
    if previous is None:
        os.environ.pop("CARAFE_CUPY_SIMULATOR", None)
    else:
        os.environ["CARAFE_CUPY_SIMULATOR"] = previous


def test_a_tiny_run_prints_both_calls_and_the_ratios(bench, capsys):
    threads = torch.get_num_threads()
    try:
        args = ["--levels", "3x4", "--channels", "4", "--rounds", "2", "--calls", "2"]
        assert bench.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    output = capsys.readouterr().out
    for row in (
        "carafe forward",
        "bare Function forward",
        "carafe forward+backward",
        "bare Function forward+backward",
    ):
        assert f"| {row} |" in output
    assert "| forward |" in output and "| forward+backward |" in output
    assert "--levels 3x4" in output  # the command is in the header


def test_launches_reach_the_stand_in_driver_and_nothing_runs(bench, monkeypatch):
    from carafe_cupy._runtime import launch as _launch

    driven = []
    with bench.driver_launch_stubbed() as runtime:
        monkeypatch.setattr(runtime, "_driver", (lambda: 0, None, lambda *a: driven.append(a)))
        features = torch.rand(1, 4, 3, 4, requires_grad=True)
        masks = torch.rand(1, 9, 6, 8, requires_grad=True)
        output = bench.carafe_cupy.carafe(features, masks, 3, 1, 2)
        torch.autograd.grad(output, (features, masks), torch.ones_like(output))
    assert len(driven) == 3  # forward, grad_features, grad_masks
    assert _launch._SIMULATED.__class__.__name__ == "_Simulated"  # put back
