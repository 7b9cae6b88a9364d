"""Source positions of traced access sites: addr2line over the traced module's DWARF."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .common import safe_name

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Frame:
    """One source position of an access site, innermost (the access) first."""

    function: str
    file: str
    line: int
    text: str  # the source line, stripped ("" when not found)

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.function})"


_frames_cache: dict[tuple[str, int], tuple[Frame, ...]] = {}


def symbolize(
    path: str, module: str, source: str, offsets: list[int]
) -> dict[int, tuple[Frame, ...]]:
    """Source frames of module offsets via addr2line (empty where it is unavailable)."""
    missing = [o for o in offsets if (path, o) not in _frames_cache]
    tool = shutil.which("addr2line")
    if missing and tool:
        cmd = [tool, "-a", "-f", "-C", "-i", "-e", path, *(hex(o) for o in missing)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
            _parse_addr2line(out.stdout, path, module, source)
        except (OSError, subprocess.SubprocessError):
            pass
    return {o: _frames_cache.get((path, o), ()) for o in offsets}


def _parse_addr2line(text: str, path: str, module: str, source: str) -> None:
    lines = text.splitlines()
    module_lines = source.splitlines()
    i = 0
    while i < len(lines):
        offset = int(lines[i], 16)
        i += 1
        frames = []
        while i + 1 < len(lines) and not lines[i].startswith("0x"):
            function, where = lines[i], lines[i + 1]
            i += 2
            file, _, line_text = where.rpartition(":")
            line = int(line_text.split()[0]) if line_text.split()[0].isdigit() else 0
            name = Path(file).name
            text = ""
            if name.startswith(_module_file_stem(module)) and 0 < line <= len(module_lines):
                text = module_lines[line - 1].strip()
            elif (_HERE / name).is_file() and line > 0:
                shim = (_HERE / name).read_text().splitlines()
                text = shim[line - 1].strip() if line <= len(shim) else ""
            frames.append(Frame(_short_function(function), name, line, text))
        _frames_cache[(path, offset)] = tuple(f for f in frames if f.line)


def _short_function(name: str) -> str:
    """``void f<int>(float const*, int)`` -> ``f<int>``: the name without signature."""
    name = name.removesuffix(" const")
    depth = 0
    if name.endswith(")"):
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    depth = start = 0
    for i, ch in enumerate(name):  # a return type ends at the last space outside <>
        depth += {"<": 1, ">": -1}.get(ch, 0)
        if ch == " " and depth == 0:
            start = i + 1
    return name[start:] or name


def _module_file_stem(module: str) -> str:
    return safe_name(module)
