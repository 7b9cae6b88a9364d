"""Every Python block in README.md and docs/*.md runs as written, and their links resolve.

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

A block that needs a GPU and has no no-gpu marker fails on a CPU-only machine: new
documentation code must either run anywhere or say how to run it without a GPU. Shell
commands go in ```bash blocks, which are not run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
MARKER = re.compile(r"^<!-- readme-test: (setup|no-gpu|skip): (.*) -->$")
REPLACEMENT = re.compile(r'"([^"]*)"\s*->\s*"([^"]*)"')
README_MAX_LINES = 300
QUICK_START_BY_LINE = 60


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


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


BLOCKS = [
    (_name(page), line, code, markers)
    for page in PAGES
    for line, code, markers in python_blocks(page.read_text())
]


def test_every_page_has_python_blocks_and_well_formed_markers():
    counts = {_name(page): 0 for page in PAGES}
    for name, line, _, markers in BLOCKS:
        counts[name] += 1
        for kind, body in markers:
            if kind == "no-gpu":
                for part in body.split(";"):
                    part = part.strip()
                    assert REPLACEMENT.search(part) or re.fullmatch(r"env \w+=\S*", part), (
                        f"{name} line {line}: cannot read no-gpu marker part {part!r}"
                    )
    assert counts["README.md"] >= 3, counts
    assert sum(counts.values()) >= 20, counts


def test_no_marker_is_left_without_a_block():
    """A marker must sit right above a ```python fence, or it silently does nothing."""
    for page in PAGES:
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            if not MARKER.match(line.strip()):
                continue
            below = number
            while below < len(lines) and MARKER.match(lines[below].strip()):
                below += 1
            assert below < len(lines) and lines[below].strip() == "```python", (
                f"{_name(page)} line {number}: marker not directly above a python block"
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


@pytest.mark.parametrize(
    "page, line, code, markers", BLOCKS, ids=[f"{b[0]}:{b[1]}" for b in BLOCKS]
)
def test_documentation_block_runs(page, line, code, markers, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup, code = _adapt(code, markers, monkeypatch)
    namespace: dict = {"__name__": "__readme__"}
    environment = dict(os.environ)  # blocks may set variables (the simulator switch, ...)
    try:
        exec(compile(setup, f"{page} setup", "exec"), namespace)
        exec(compile(code, f"{page} line {line}", "exec"), namespace)
    finally:
        os.environ.clear()
        os.environ.update(environment)


def test_ci_runs_the_readme_test_command():
    quick_start = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^pip install -e .*pytest.*$", quick_start, flags=re.MULTILINE)
    assert len(commands) == 1, commands
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[0] in ci


def test_the_readme_stays_short_with_the_quick_start_near_the_top():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    assert "## Quick start" in lines[:QUICK_START_BY_LINE]


def _slug(heading: str) -> str:
    """The anchor a GitHub-rendered heading gets (ASCII headings)."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    return {_slug(match) for match in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve(page):
    """Links to files of the repository, and to headings, point at something that exists."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{_name(page)}: link to missing {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{_name(page)}: no heading for {target}"


def test_the_index_lists_every_page():
    index = (DOCS / "README.md").read_text()
    for page in DOCS.glob("*.md"):
        if page.name != "README.md":
            assert f"({page.name})" in index, f"docs/README.md does not link {page.name}"
