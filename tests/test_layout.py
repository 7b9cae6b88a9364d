"""The package's layers: imports only go down, never round in a cycle, and every
module stays readable. Counted from the source, so a lazy import inside a
function counts the same as one at the top."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import layout_counts  # noqa: E402

LAYERS = layout_counts.LAYERS  # bottom to top; "top": the public modules, the CLI, the demo


def _layer(module: str) -> int:
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else "top"
    return LAYERS.index(name) if name in LAYERS else LAYERS.index("top")


def test_imports_only_go_down():
    graph = layout_counts.import_graph(layout_counts.modules())
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if _layer(target) > _layer(module)
    )
    assert not upward, upward


def test_no_import_cycles():
    assert layout_counts.cycles(layout_counts.import_graph(layout_counts.modules())) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert layout_counts.cycles(graph) == [["a", "b", "c"]]


def test_no_source_file_is_far_past_400_lines():
    package = layout_counts.PACKAGE
    long = {
        str(path.relative_to(package)): lines
        for path in package.rglob("*")
        if path.suffix in {".py", ".cpp", ".h"}
        and (lines := len(path.read_text().splitlines())) > 430
    }
    assert not long, long


def test_every_subpackage_says_what_it_holds():
    for init in layout_counts.PACKAGE.glob("*/__init__.py"):
        module = importlib.import_module(f"carafe_cupy.{init.parent.name}")
        assert module.__doc__ and len(module.__doc__.strip()) > 40, init


@pytest.mark.parametrize(
    "module, names",
    [
        ("carafe_cupy", ["carafe", "carafe_backward", "reassemble", "reassemble_backward",
                         "carafe_from_logits", "decompositions", "KernelsUnavailableError",
                         "KernelCompileError", "CARAFEPack", "Involution"]),
        ("carafe_cupy.nn", ["CARAFE", "CARAFENaive", "CARAFEPack"]),
        ("carafe_cupy.nn_reassembly", ["CARAFEDownPack", "Involution"]),
        ("carafe_cupy.mmcv_compat", ["CARAFEFunction", "CARAFENaiveFunction", "normal_init"]),
        ("carafe_cupy.arrays", ["carafe", "carafe_backward", "reassemble",
                                "reassemble_backward"]),
    ],
)
def test_public_names_import_from_where_they_did(module, names):
    imported = importlib.import_module(module)
    missing = [name for name in names if not hasattr(imported, name)]
    assert not missing, missing
