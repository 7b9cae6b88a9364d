"""ptxas' scheduling decisions, read from each SASS instruction's control bits.

From Volta on, an instruction is 128 bits and its top 23 bits are control
information set by ptxas, which the warp scheduler obeys instead of tracking
dependencies itself. ``nvdisasm -hex`` prints the instruction as two 64-bit
words; the control bits are bits 41 to 63 of the second (high) word. Layout,
from the lowest bit (Jia, Maggioni, Staiger, Scarpazza, "Dissecting the NVIDIA
Volta GPU Architecture via Microbenchmarking", arXiv:1804.06826, section 2.1,
which Turing, Ampere and Hopper keep):

* 4 bits stall count: cycles before the warp may issue its next instruction;
* 1 bit yield flag (the model does not use it);
* 3 bits write scoreboard: set by a variable-latency instruction (memory,
  MUFU, ...) until its result is written; 7 means none;
* 3 bits read scoreboard: set until the instruction has read its source
  registers (stores), so they may be overwritten; 7 means none;
* 6 bits wait mask: scoreboards to wait for before issuing;
* 4 bits operand reuse cache flags.

A scoreboard counts its pending instructions; waiting on it waits for all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONTROL_SHIFT = 41  # bit 105 of the instruction, in its high 64-bit word
NO_SCOREBOARD = 7


@dataclass(frozen=True)
class Control:
    stall: int
    yield_flag: int
    write_scoreboard: int | None
    read_scoreboard: int | None
    wait_mask: int
    reuse: int

    @property
    def waits(self) -> tuple[int, ...]:
        return tuple(bit for bit in range(6) if self.wait_mask >> bit & 1)


def decode(high_word: int) -> Control:
    """The control fields of an instruction whose high 64-bit word is ``high_word``."""
    bits = high_word >> CONTROL_SHIFT
    write = bits >> 5 & 7
    read = bits >> 8 & 7
    return Control(
        stall=bits & 15,
        yield_flag=bits >> 4 & 1,
        write_scoreboard=None if write == NO_SCOREBOARD else write,
        read_scoreboard=None if read == NO_SCOREBOARD else read,
        wait_mask=bits >> 11 & 63,
        reuse=bits >> 17 & 15,
    )


# ---------------------------------------------------------------- what an opcode does

GLOBAL_LOADS = ("LDG", "LD.", "LDL", "ATOMG", "ATOM.", "RED.", "LDGSTS")
GLOBAL_STORES = ("STG", "ST.", "STL")
SHARED = ("LDS", "STS", "LDSM", "ATOMS")
BARRIERS = ("BAR.SYNC", "BAR.RED", "BAR.ARV")
_WIDTH = re.compile(r"\.(64|128)(?:\.|$)")


def kind(opcode: str) -> str:
    """"global_load", "global_store", "shared", "barrier" or "other"."""
    name = opcode if "." in opcode else opcode + "."
    if name.startswith(SHARED):
        return "shared"
    if name.startswith(GLOBAL_LOADS):
        return "global_load"
    if name.startswith(GLOBAL_STORES):
        return "global_store"
    if opcode.startswith(BARRIERS):
        return "barrier"
    return "other"


def width_factor(opcode: str) -> int:
    """Phases of a shared access: 8-byte accesses go per half warp, 16-byte ones per
    quarter warp, so a conflict-free one takes 2 or 4 wavefronts."""
    found = _WIDTH.search(opcode)
    return {"64": 2, "128": 4}[found.group(1)] if found else 1
