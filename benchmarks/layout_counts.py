"""Counts that show the package's layering: modules per folder, import cycles
(every import, including those inside functions), and the package modules one
public call passes through (torch CPU path, and the array front end under the
simulator).

    python benchmarks/layout_counts.py
"""

from __future__ import annotations

import ast
import os
import sys
from collections import Counter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "carafe_cupy"
# The private layers, bottom to top; a module may import its own layer and those before it.
LAYERS = (
    "_core",
    "_kernels",
    "_plan",
    "_sim",
    "_runtime",
    "_cpu",
    "_torch",
    "_array",
    "_profile",
    "top",
)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Edges to non-package modules (a package's __init__ re-exports, it is not a layer)."""
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            edges.update(
                t for t in targets if t in mods and t != name and mods[t].name != "__init__.py"
            )
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _layer_of(relative: str) -> int:
    """Position of a module's folder in LAYERS (the public modules are the top)."""
    folder = relative.split(os.sep)[0] if os.sep in relative else "top"
    return LAYERS.index(folder) if folder in LAYERS else LAYERS.index("top")


def modules_called(call) -> tuple[list[str], list[str]]:
    """Package modules whose code runs during ``call()`` (second call: caches warm),
    in the order first entered, and the calls that climb from a lower layer back
    up to a higher one (a callee above its caller)."""
    call()
    seen: list[str] = []
    upward: list[str] = []
    root = str(PACKAGE)

    def profiler(frame, event, arg):
        filename = frame.f_code.co_filename
        if event != "call" or not filename.startswith(root):
            return
        module = os.path.relpath(filename, root)
        if module not in seen:
            seen.append(module)
        caller = frame.f_back.f_code.co_filename if frame.f_back else ""
        if caller.startswith(root):
            source = os.path.relpath(caller, root)
            if _layer_of(module) > _layer_of(source):
                upward.append(f"{source} -> {module}")

    sys.setprofile(profiler)
    try:
        call()
    finally:
        sys.setprofile(None)
    return seen, list(dict.fromkeys(upward))


def main() -> None:
    mods = modules()
    per_folder = Counter(str(path.parent.relative_to(PACKAGE.parent)) for path in mods.values())
    print("modules per folder:")
    for folder, count in sorted(per_folder.items()):
        print(f"  {folder}: {count}")
    long = [
        (str(p.relative_to(PACKAGE.parent)), n)
        for p in PACKAGE.rglob("*")
        if p.suffix in {".py", ".cpp", ".h"} and (n := len(p.read_text().splitlines())) > 400
    ]
    print("files over 400 lines:", long or "none")
    found = cycles(import_graph(mods))
    print(f"import cycles: {len(found)}")
    for component in found:
        print("  " + " <-> ".join(component))

    import numpy as np
    import torch

    import carafe_cupy

    features, masks = torch.randn(1, 4, 5, 6), torch.rand(1, 9, 10, 12)
    torch_path, torch_up = modules_called(lambda: carafe_cupy.carafe(features, masks, 3, 1, 2))
    print(f"carafe() on torch CPU tensors passes through {len(torch_path)} modules:")
    print("  " + " -> ".join(torch_path))
    print(f"  calls back up to a higher layer: {len(torch_up)} {torch_up}")
    os.environ["CARAFE_CUPY_SIMULATOR"] = "1"
    arrays = features.numpy(), masks.numpy()
    sim_path, sim_up = modules_called(lambda: carafe_cupy.carafe(*arrays, 3, 1, 2))
    print(f"carafe() on numpy arrays (simulator) passes through {len(sim_path)} modules:")
    print("  " + " -> ".join(sim_path))
    print(f"  calls back up to a higher layer: {len(sim_up)} {sim_up}")
    assert np.allclose(
        carafe_cupy.carafe(*arrays, 3, 1, 2),
        carafe_cupy.carafe(features, masks, 3, 1, 2).numpy(),
        atol=1e-5,
    )


if __name__ == "__main__":
    main()
