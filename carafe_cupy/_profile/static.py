"""What the compiler made of each kernel: registers, spills and shared memory
from ptxas (``-Xptxas=-v``), and SASS instruction counts per kernel and per
loop from NVRTC's cubin disassembled with ``nvdisasm``. No GPU needed.

Modules are compiled with ``--generate-line-info`` so every SASS instruction
carries its source line; a loop is named by the line of its backward branch.
Results are cached on disk per (source, architecture, compiler versions).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .._kernels import sources as _sources
from .control import Control, decode

# nvdisasm's options: -hex prints each instruction's encoding, whose control bits
# (stall counts, scoreboards) the scheduling model reads (``control.py``)
NVDISASM_OPTIONS = ("-c", "-g", "-hex")
NVDISASM_HINT = (
    "nvdisasm was not found: install the profile extra from the repository (pip install "
    "'.[profile]', which brings the nvidia-cuda-nvdisasm wheel), put a CUDA toolkit's "
    "nvdisasm on PATH, or point CARAFE_CUPY_NVDISASM at it"
)


@dataclass(frozen=True)
class Resources:
    """ptxas' report for one kernel."""

    registers: int
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    stack_frame: int  # bytes
    static_shared: int  # bytes of __shared__ statics (dynamic shared memory is per launch)


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # mnemonic with modifiers, without predicate or operands
    text: str
    line: int | None  # innermost source line (of the expanded module source)
    control: Control | None = None  # None when the SASS was printed without -hex


@dataclass(frozen=True)
class Loop:
    """A SASS loop: a backward branch and the instructions it jumps over."""

    start: int
    end: int  # address of the backward branch
    line: int | None
    source: str  # that source line, stripped
    instructions: int  # all instructions inside, nested loops included
    own_instructions: int  # those not inside a nested loop
    global_loads: int  # LDG instructions inside, nested loops included
    shared_stores: int  # STS instructions not inside a nested loop
    load_rounds: int  # runs of LDG not inside a nested loop, split where a value is stored
    parent: int | None  # index of the innermost enclosing loop


@dataclass(frozen=True)
class KernelStatic:
    kernel: str
    arch: str
    resources: Resources
    instructions: int  # the kernel's SASS, subroutines included
    subroutine_instructions: int  # 64-bit division and the like, called from slow paths
    straight_line_instructions: int  # outside every loop and subroutine
    straight_line_load_rounds: int
    loops: tuple[Loop, ...]
    body: tuple[Instruction, ...] = ()  # in address order, subroutines left out

    def own_body(self, index: int) -> tuple[Instruction, ...]:
        """Loop ``index``'s instructions outside its nested loops, in address order."""
        loop = self.loops[index]
        children = [(o.start, o.end) for o in self.loops if o.parent == index]
        return tuple(
            i for i in self.body if loop.start <= i.address <= loop.end
            and not any(s <= i.address <= e for s, e in children)
        )

    def straight_body(self) -> tuple[Instruction, ...]:
        """The instructions outside every loop, in address order."""
        return tuple(
            i for i in self.body if not any(o.start <= i.address <= o.end for o in self.loops)
        )

    def as_dict(self) -> dict:
        return {
            "kernel": self.kernel,
            "arch": self.arch,
            "registers": self.resources.registers,
            "spill_bytes": self.resources.spill_stores + self.resources.spill_loads,
            "static_shared": self.resources.static_shared,
            "instructions": self.instructions,
            "straight_line": self.straight_line_instructions,
            "loops": [
                {
                    "line": loop.line,
                    "source": loop.source,
                    "instructions": loop.instructions,
                    "own_instructions": loop.own_instructions,
                    "global_loads": loop.global_loads,
                    "shared_stores": loop.shared_stores,
                    "load_rounds": loop.load_rounds,
                    "parent": loop.parent,
                }
                for loop in self.loops
            ],
        }


# ---------------------------------------------------------------- ptxas report

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_NUMBERS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack_frame": re.compile(r"(\d+) bytes stack frame"),
    "static_shared": re.compile(r"(\d+) bytes smem"),
}


def parse_ptxas(log: str) -> dict[str, Resources]:
    """Per kernel: registers, spills, stack and static shared memory."""
    chunks: dict[str, str] = {}
    current = None
    for line in log.splitlines():
        match = _ENTRY.search(line)
        if match:
            current = match.group(1)
            chunks[current] = ""
        elif current is not None:
            chunks[current] += line + "\n"
    report = {}
    for kernel, text in chunks.items():
        values = {}
        for field, pattern in _NUMBERS.items():
            found = pattern.search(text)
            values[field] = int(found.group(1)) if found else 0
        report[kernel] = Resources(**values)
    return report


# ---------------------------------------------------------------- SASS

_SECTION = re.compile(r"^\s*\.text\.(\w+):\s*$")
_LINE_MARK = re.compile(r'//## File "[^"]*", line (\d+)')
_LABEL = re.compile(r"^\s*([.$\w]+):\s*$")
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_TARGET = re.compile(r"`\(([.$\w]+)\)")
_HIGH_WORD = re.compile(r"^\s*/\* 0x([0-9a-f]{16}) \*/\s*$")


def _opcode(text: str) -> str:
    words = text.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0] if words else ""


def parse_sass(sass: str) -> dict[str, tuple[list[Instruction], dict[str, int]]]:
    """Per kernel: its instructions in order, and its labels' addresses. With
    ``nvdisasm -hex`` output, each instruction carries its decoded control bits
    (from the second word printed, on the line after it)."""
    kernels: dict[str, tuple[list[Instruction], dict[str, int]]] = {}
    instructions: list[Instruction] = []
    labels: dict[str, int] = {}
    pending: list[str] = []
    line = None
    for raw in sass.splitlines():
        section = _SECTION.match(raw)
        if section:
            instructions, labels, pending, line = [], {}, [], None
            kernels[section.group(1)] = (instructions, labels)
            continue
        high = _HIGH_WORD.match(raw)
        if high and instructions and instructions[-1].control is None:
            last = instructions[-1]
            instructions[-1] = Instruction(
                last.address, last.opcode, last.text, last.line, decode(int(high.group(1), 16))
            )
            continue
        mark = _LINE_MARK.search(raw)
        if mark:
            line = int(mark.group(1))
            continue
        label = _LABEL.match(raw)
        if label:
            pending.append(label.group(1))
            continue
        found = _INSTRUCTION.match(raw)
        if found and kernels:
            address = int(found.group(1), 16)
            for name in pending:
                labels[name] = address
            pending = []
            text = found.group(2)
            instructions.append(Instruction(address, _opcode(text), text, line))
    return kernels


def load_rounds(instructions: list[Instruction]) -> int:
    """Global loads that must wait for each other: a load issued after a store of
    an earlier loaded value (into shared memory or global) starts a new round."""
    rounds, stored_since_load = 0, True
    for instruction in instructions:
        if instruction.opcode.startswith("LDG"):
            rounds += stored_since_load
            stored_since_load = False
        elif instruction.opcode.startswith(("STS", "STG")):
            stored_since_load = True
    return rounds


def analyse_kernel(
    kernel: str, arch: str, resources: Resources, code, source_lines: list[str]
) -> KernelStatic:
    """Loops, their nesting and instruction counts for one kernel's SASS."""
    instructions, labels = code
    subroutine_start = min(
        (address for name, address in labels.items() if name.startswith("$")), default=None
    )
    body = [i for i in instructions if subroutine_start is None or i.address < subroutine_start]
    fallback = _divergent_fallbacks(body, labels)
    body = [i for i in body if i.address not in fallback]
    spans = []
    for instruction in body:
        if not instruction.opcode.startswith("BRA"):
            continue
        target = _TARGET.search(instruction.text)
        start = labels.get(target.group(1)) if target else None
        if start is not None and start < instruction.address:
            spans.append((start, instruction.address, instruction.line))
    spans.sort(key=lambda span: (span[0], -span[1]))
    loops: list[Loop] = []
    for index, (start, end, line) in enumerate(spans):
        inside = [i for i in body if start <= i.address <= end]
        enclosing = [
            other for other, (s, e, _) in enumerate(spans) if other != index and s <= start
            and end <= e and (s, e) != (start, end)
        ]
        parent = max(enclosing, key=lambda other: spans[other][0], default=None)
        children = [
            (s, e) for other, (s, e, _) in enumerate(spans)
            if other != index and start <= s and e <= end and (s, e) != (start, end)
        ]
        own = [i for i in inside if not any(s <= i.address <= e for s, e in children)]
        text = source_lines[line - 1].strip() if line and line <= len(source_lines) else ""
        loops.append(
            Loop(
                start, end, line, text, len(inside), len(own),
                sum(i.opcode.startswith("LDG") for i in inside),
                sum(i.opcode.startswith("STS") for i in own),
                load_rounds(own),
                parent,
            )
        )
    straight = [i for i in body if not any(s <= i.address <= e for s, e, _ in spans)]
    return KernelStatic(
        kernel=kernel,
        arch=arch,
        resources=resources,
        instructions=len(instructions),
        subroutine_instructions=len(instructions) - len(body),
        straight_line_instructions=len(straight),
        straight_line_load_rounds=load_rounds(straight),
        loops=tuple(loops),
        body=tuple(body),
    )


def _divergent_fallbacks(body: list[Instruction], labels: dict[str, int]) -> set[int]:
    """Addresses of the code a ``BRA.DIV`` jumps to: ptxas' path for a warp that
    reaches a warp barrier (``__syncwarp``) diverged, placed after the kernel's
    exits, from its target to the unconditional branch back. A converged warp
    never runs it, and its branch back is no loop."""
    fallback: set[int] = set()
    for instruction in body:
        if not instruction.opcode.startswith("BRA.DIV"):
            continue
        target = _TARGET.search(instruction.text)
        start = labels.get(target.group(1)) if target else None
        if start is None or start < instruction.address:
            continue
        for candidate in body:
            if candidate.address < start:
                continue
            fallback.add(candidate.address)
            if candidate.opcode == "BRA" and not candidate.text.startswith("@"):
                break
    return fallback


# ---------------------------------------------------------------- compile, cached


def find_nvdisasm() -> str:
    """nvdisasm from CARAFE_CUPY_NVDISASM, PATH, or the nvidia-cuda-nvdisasm wheel."""
    explicit = os.environ.get("CARAFE_CUPY_NVDISASM")
    if explicit:
        return explicit
    on_path = shutil.which("nvdisasm")
    if on_path:
        return on_path
    for entry in sys.path:
        for pattern in ("nvidia/*/bin/nvdisasm", "nvidia/*/*/bin/nvdisasm"):
            found = sorted(glob.glob(os.path.join(entry, pattern)))
            if found:
                return found[-1]
    raise FileNotFoundError(NVDISASM_HINT)


def cache_dir() -> Path:
    return Path(
        os.environ.get(
            "CARAFE_CUPY_PROFILE_CACHE", os.path.expanduser("~/.cache/carafe_cupy/profile")
        )
    )


def _compile(module: str, arch: str) -> tuple[str, str]:
    """ptxas log and SASS text of one module for one architecture."""
    from .._runtime import cupy_runtime as _cupy_runtime

    log, cubin = _cupy_runtime.compile_offline_cubin(arch, module)  # the binary that runs
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"{module}.cubin"
        path.write_bytes(cubin)
        done = subprocess.run(
            [find_nvdisasm(), *NVDISASM_OPTIONS, str(path)], capture_output=True, text=True
        )
    if done.returncode != 0:
        raise RuntimeError(f"nvdisasm failed on {module} for {arch}: {done.stderr.strip()}")
    return log, done.stdout


def module_static(module: str, arch: str) -> dict[str, KernelStatic]:
    """Every kernel of ``module`` compiled for ``arch``, analysed (disk-cached)."""
    source = _sources.kernel_source(module)
    key = hashlib.sha256(
        "\0".join((source, arch, *NVDISASM_OPTIONS, *_sources.NVRTC_OPTIONS, _tool_versions()))
        .encode()
    ).hexdigest()[:24]
    path = cache_dir() / f"{module}-{arch}-{key}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        log, sass = cached["log"], cached["sass"]
    else:
        log, sass = _compile(module, arch)
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(json.dumps({"log": log, "sass": sass}))
        os.replace(scratch, path)
    resources = parse_ptxas(log)
    lines = source.splitlines()
    return {
        kernel: analyse_kernel(kernel, arch, resources[kernel], code, lines)
        for kernel, code in parse_sass(sass).items()
        if kernel in resources
    }


def _tool_versions() -> str:
    from .._runtime import cupy_runtime as _cupy_runtime

    nvrtc = _cupy_runtime._import_cupy().cuda.nvrtc
    # the offline compile's options live in cupy_runtime: any change there recompiles
    compiler = hashlib.sha256(Path(_cupy_runtime.__file__).read_bytes()).hexdigest()[:12]
    return (
        f"nvrtc {nvrtc.getVersion()} nvdisasm {os.path.basename(find_nvdisasm())} "
        f"cupy_runtime {compiler}"
    )
