"""A stand-in for the CuPy runtime that records each launch instead of running it.

It replaces ``_runtime.cupy_runtime.get_runtime`` (the launcher's only way to a GPU),
so it sits at the ``CupyRuntime.launch`` boundary and needs nothing of how kernels
are compiled or loaded. With it, the launch code's device and stream handling is
tested on a machine without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from carafe_cupy._runtime import cupy_runtime as _cupy_runtime


@dataclass(frozen=True)
class RecordedLaunch:
    module_name: str
    source: str
    kernel_name: str
    grid: tuple
    block: tuple
    args: tuple
    shared_mem: int
    device: int
    stream: int


class RecordingRuntime:
    """Has ``CupyRuntime.launch``'s signature; keeps every call in ``launches``."""

    def __init__(self) -> None:
        self.launches: list[RecordedLaunch] = []

    def launch(
        self,
        module_name: str,
        source: str,
        kernel_name: str,
        grid: tuple,
        block: tuple,
        args: tuple,
        shared_mem: int = 0,
        device: int = 0,
        stream: int = 0,
    ) -> None:
        self.launches.append(
            RecordedLaunch(
                module_name, source, kernel_name, grid, block, args, shared_mem, device, stream
            )
        )


def install(monkeypatch: pytest.MonkeyPatch) -> RecordingRuntime:
    """Replace the launcher's GPU runtime by a :class:`RecordingRuntime` and turn the
    simulator off (the launcher then takes its GPU branch); undone with ``monkeypatch``."""
    runtime = RecordingRuntime()
    monkeypatch.delenv("CARAFE_CUPY_SIMULATOR", raising=False)
    monkeypatch.setattr(_cupy_runtime, "get_runtime", lambda: runtime)
    return runtime
