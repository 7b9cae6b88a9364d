"""Every Python block in README.md runs as written.

Each ```python block runs on its own, in a fresh namespace, in an empty temporary
directory. An HTML comment on the lines right above a block's opening fence changes that
(several may stack, one per line):

<!-- readme-test: setup: CODE -->
    CODE (one line; separate statements with ";") runs first, in the same namespace:
    for blocks that continue from "your model" and the like.
<!-- readme-test: no-gpu: "OLD" -> "NEW", "OLD2" -> "NEW2"; env NAME=VALUE -->
    On a machine without a CUDA GPU, replace the quoted text in the block and set the
    environment variables first (e.g. run CuPy code on numpy arrays in the simulator).
<!-- readme-test: skip: REASON -->
    The block is not run; the test reports it as skipped with REASON.

A block that needs a GPU and has no no-gpu marker fails on a CPU-only machine: new README
code must either run anywhere or say how to run it without a GPU.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"^<!-- readme-test: (setup|no-gpu|skip): (.*) -->$")
REPLACEMENT = re.compile(r'"([^"]*)"\s*->\s*"([^"]*)"')


def python_blocks(text: str) -> list[tuple[int, str, list[tuple[str, str]]]]:
    """(line number, code, markers) for every ```python block, markers nearest last."""
    lines = text.splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        if lines[index].strip() != "```python":
            index += 1
            continue
        indent = lines[index][: len(lines[index]) - len(lines[index].lstrip())]
        markers = []
        above = index - 1
        while above >= 0 and MARKER.match(lines[above].strip()):
            markers.insert(0, MARKER.match(lines[above].strip()).groups())
            above -= 1
        end = index + 1
        while lines[end].strip() != "```":
            end += 1
        code = "\n".join(line.removeprefix(indent) for line in lines[index + 1 : end])
        blocks.append((index + 1, code, markers))
        index = end + 1
    return blocks


BLOCKS = python_blocks(README.read_text())


def test_the_readme_has_python_blocks_and_well_formed_markers():
    assert len(BLOCKS) >= 5
    for line, _, markers in BLOCKS:
        for kind, body in markers:
            if kind == "no-gpu":
                for part in body.split(";"):
                    part = part.strip()
                    assert REPLACEMENT.search(part) or re.fullmatch(r"env \w+=\S*", part), (
                        f"README.md line {line}: cannot read no-gpu marker part {part!r}"
                    )


def _adapt(code: str, markers: list[tuple[str, str]], monkeypatch) -> tuple[str, str]:
    """(setup code, block code) after applying the markers for this machine."""
    setup = []
    for kind, body in markers:
        if kind == "skip":
            pytest.skip(body)
        if kind == "setup":
            setup.append(body)
        if kind == "no-gpu" and not torch.cuda.is_available():
            for part in body.split(";"):
                part = part.strip()
                if part.startswith("env "):
                    name, value = part[4:].split("=", 1)
                    monkeypatch.setenv(name, value)
                for old, new in REPLACEMENT.findall(part):
                    assert old in code, f"no-gpu marker: {old!r} is not in the block"
                    code = code.replace(old, new)
    return "\n".join(setup), code


@pytest.mark.parametrize("line, code, markers", BLOCKS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_readme_block_runs(line, code, markers, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup, code = _adapt(code, markers, monkeypatch)
    namespace: dict = {"__name__": "__readme__"}
    environment = dict(os.environ)  # blocks may set variables (the simulator switch, ...)
    try:
        exec(compile(setup, "README.md setup", "exec"), namespace)
        exec(compile(code, f"README.md line {line}", "exec"), namespace)
    finally:
        os.environ.clear()
        os.environ.update(environment)


def test_ci_runs_the_readme_test_command():
    quick_start = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^pip install -e .*pytest.*$", quick_start, flags=re.MULTILINE)
    assert len(commands) == 1, commands
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[0] in ci
