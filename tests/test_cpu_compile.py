"""How the CPU kernels are compiled (``_cpu.jit_compile``): every kernel module's
functions cached under the package's rules, and the inline scratch allocation."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from carafe_cupy._cpu import jit_cache  # noqa: E402
from carafe_cupy._cpu.jit_dtypes import accumulation_zeros  # noqa: E402


def test_every_kernel_module_is_in_the_digest_and_no_running_module_is():
    names = set(jit_cache._KERNEL_FILES)
    assert {"jit_cache.py", "jit_compile.py", "jit_dtypes.py", "jit_kernels.py"} <= names
    assert not names & {"jit_dispatch.py", "jit_choice.py", "jit_warmup.py"}
    folder = Path(jit_cache.__file__).parent
    assert names == {path.name for path in folder.glob("jit_*.py")} - jit_cache._RUNNING_FILES


def test_every_compiled_function_is_cached_in_the_package_folder():
    if jit_cache.user_cache_dir():
        pytest.skip("NUMBA_CACHE_DIR is set, so Numba's own folder holds the kernels")
    dispatchers = []
    for name in jit_cache._KERNEL_FILES:
        module = importlib.import_module(f"carafe_cupy._cpu.{Path(name).stem}")
        dispatchers += [value for value in vars(module).values()
                        if isinstance(value, numba.core.registry.CPUDispatcher)]
    assert len(dispatchers) >= 10
    for dispatcher in dispatchers:
        assert Path(dispatcher._cache._cache_path) == jit_cache.cache_dir(), dispatcher


@pytest.mark.parametrize("storage, expected", [
    (np.float32, np.float32), (np.float64, np.float64),
    (np.int16, np.float32), (np.uint16, np.float32),  # fp16 and bf16 bits
])
def test_accumulation_zeros_are_cleared_in_the_accumulation_dtype(storage, expected):
    @numba.njit
    def fill_then_fresh(like, count):
        first = accumulation_zeros(count, like)
        first[:] = 7  # memory handed back and given out again must come back cleared
        return first.sum(), accumulation_zeros(count, like), accumulation_zeros((2, 3), like)

    used, fresh, shaped = fill_then_fresh(np.ones(4, storage), 1000)
    assert used == 7000
    assert fresh.dtype == expected and fresh.shape == (1000,) and not fresh.any()
    assert fresh.flags.c_contiguous and fresh.ctypes.data % 16 == 0
    assert shaped.dtype == expected and shaped.shape == (2, 3) and not shaped.any()
    assert fill_then_fresh(np.ones(1, storage), 0)[1].shape == (0,)
