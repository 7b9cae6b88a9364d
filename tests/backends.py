"""The backends the property tests run on.

A backend is a device for the input tensors plus environment variables that
select an implementation. To add one (for example the CPU simulator of the
CUDA kernels, ``CARAFE_CUPY_SIMULATOR=1`` with CPU tensors), append it in
:func:`available_backends`; every test parametrised over ``BACKENDS`` then
runs on it too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backend:
    name: str
    device: str
    environment: dict[str, str] = field(default_factory=dict)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        previous = {name: os.environ.get(name) for name in self.environment}
        os.environ.update(self.environment)
        try:
            yield
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def available_backends() -> list[Backend]:
    """The pure-PyTorch CPU path, the kernels on the CPU simulator, and on a GPU if usable."""
    import shutil

    import torch

    from carafe_cupy._runtime import cupy_runtime as _cupy_runtime

    backends = [Backend("cpu", "cpu")]
    if shutil.which("g++") or shutil.which("c++"):
        # the real .cu kernels through the real launch code, on the CPU
        backends.append(Backend("simulator", "cpu", {"CARAFE_CUPY_SIMULATOR": "1"}))
    if torch.cuda.is_available() and _cupy_runtime.gpu_kernels_available():
        backends.append(Backend("cuda-kernels", "cuda"))
    return backends


BACKENDS = available_backends()
