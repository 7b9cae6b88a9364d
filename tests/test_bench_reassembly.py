"""The involution / CARAFE++ downsampling benchmark runs and reports (CPU, tiny shapes)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_reassembly.py"


def _load():
    name = "carafe_bench_reassembly"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def test_quick_run_prints_times_memory_and_ratios(tmp_path, capsys):
    from carafe_cupy.__main__ import main

    args = ["--quick", "--device", "cpu", "--reps", "2", "--out", str(tmp_path)]
    assert main(["bench", "--reassembly", *args]) == 0
    bench = sys.modules["carafe_cupy_bench_reassembly"]
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "results.md").read_text() in printed
    rows = report["results"]
    # every case x level x mode x implementation, each timed and measured
    assert len(rows) == len(bench.QUICK_CASES) * 2 * 2 * 2
    for row in rows:
        assert row["status"] == "ok", row
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert row["reps"] == 2
        assert isinstance(row["peak_mem_bytes"], int), row
    table = [line for line in printed.splitlines() if line.startswith(("| inv-", "| down-"))]
    assert len(table) == len(rows) // 2
    for line in table:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert float(cells[5]) > 0 and float(cells[6]) > 0  # the time ratios
        assert float(cells[7]) >= 0 and float(cells[8]) >= 0  # peak MiB of each
    assert report["meta"]["commit"] and report["meta"]["machine"]


def test_unknown_case_is_refused(capsys):
    assert _load().main(["--cases", "inv-nope"]) == 2
    assert "unknown cases ['inv-nope']" in capsys.readouterr().err
