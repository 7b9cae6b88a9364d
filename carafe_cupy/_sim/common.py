"""What every simulator module shares: its error and the file-name rule."""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent  # the C++ sources of the scheduler and tracer


class SimulatorError(RuntimeError):
    """The simulator could not compile or run a kernel."""


def safe_name(module_name: str) -> str:
    """A module name made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", module_name)[:64] or "module"
