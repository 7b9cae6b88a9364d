"""Both CPU paths, for test modules that import this fixture: every test in the
module runs on the compiled kernels (numba) and on the pure-PyTorch fallback."""

from __future__ import annotations

import pytest

from carafe_cupy._cpu import jit_dispatch

CPU_PATHS = ("numba", "torch")


@pytest.fixture(params=CPU_PATHS, autouse=True)
def cpu_path(request, monkeypatch):
    monkeypatch.setenv(jit_dispatch.ENVIRONMENT_VARIABLE, request.param)
    return request.param
