import importlib.util
import os
import sys
from pathlib import Path

import pytest

from carafe_cupy._core.errors import CPU_TORCH_HINT

# tests import their helpers (naive.py) by plain name
sys.path.insert(0, str(Path(__file__).resolve().parent))

# What the suite needs to test anything worth the name. A missing one fails the run up front
# instead of skipping whole modules; only tests that need a GPU may skip.
CPU_TORCH = CPU_TORCH_HINT
TEST_EXTRA = 'pip install -e ".[test,cuda13]"'
REQUIRED = {
    "torch": f"the CPU build is enough, {CPU_TORCH}",
    "cupy": f"the kernels are compiled offline with NVRTC through CuPy: {TEST_EXTRA}",
    **{
        module: TEST_EXTRA
        for module in (
            "hypothesis",
            "onnx",
            "onnxruntime",
            "onnxscript",
            "matplotlib",
            "skimage",
            "nbclient",
            "numba",
        )
    },
}


def missing_test_dependencies() -> list[str]:
    """One line per required module that cannot be found, saying how to install it."""
    return [
        f"{module} is not installed ({how})"
        for module, how in REQUIRED.items()
        if importlib.util.find_spec(module) is None
    ]


def pytest_configure(config: pytest.Config) -> None:
    missing = missing_test_dependencies()
    if missing:
        raise pytest.UsageError(
            "carafe_cupy tests cannot run without their dependencies:\n  "
            + "\n  ".join(missing)
            + f"\nOn a CPU-only machine: {CPU_TORCH} && {TEST_EXTRA}"
        )


try:
    from hypothesis import settings
except ImportError:  # reported by pytest_configure
    pass
else:
    # "ci": the same examples on every run, few enough for a 2-core machine.
    settings.register_profile(
        "ci", derandomize=True, max_examples=40, deadline=None, database=None, print_blob=True
    )
    # "long": fresh random examples, many of them; for local runs.
    settings.register_profile("long", max_examples=3000, deadline=None, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
