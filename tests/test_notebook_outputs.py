"""The quick-start notebook is committed with its outputs, so its figures show on the
repository's web pages without running it (test_examples.py executes it)."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "carafe_quickstart.ipynb"


def code_cells():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_every_code_cell_ran_in_order_without_errors():
    cells = code_cells()
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1))
    for cell in cells:
        assert cell.outputs, f"cell {cell.execution_count} has no output"
        assert all(output.output_type != "error" for output in cell.outputs)


def test_the_figures_are_stored_and_nothing_local_leaks():
    cells = code_cells()
    figures = sum(
        "image/png" in output.get("data", {}) for cell in cells for output in cell.outputs
    )
    assert figures >= 2
    text = NOTEBOOK.read_text()
    for local in ("/home/", "/root/", "/tmp/", "/work/"):
        assert local not in text, f"the notebook's outputs mention {local}"
    # no per-cell run timestamps: re-running it changes only what it prints
    assert all("execution" not in cell.metadata for cell in cells)
