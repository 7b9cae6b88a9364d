"""What a plan is made of: the call's geometry, a tensor as the planner sees it,
one planned launch, the launch limits, and the kernel variant a caller asks for.
Pure Python; ``_plan.planner`` builds plans from these and re-exports them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from .._core import env as _env
from .._core.geometry import (  # noqa: F401 (re-exported: the planner's names)
    ACCUMULATOR_SIZE,
    ITEMSIZE,
    Geometry,
    TensorRef,
)
from .._kernels.constants import (  # noqa: F401 (re-exported)
    CHANNEL_BATCH_MAX,
    GENERAL_FEATURES_STRIP,
    GENERAL_FORWARD_STRIP,
    GENERAL_TAP_STRIP,
    TILE_THREADS,
)
from .._kernels.names import KernelId

THREADS_PER_BLOCK = 256
# Kernels use grid-stride loops, so the grid can be capped without losing work.
MAX_BLOCKS = 1 << 20
MAX_GRID_X = 2**31 - 1  # CUDA's limit on gridDim.x
SHARED_MEMORY_LIMIT = 48 * 1024  # dynamic shared memory without an opt-in
# grad_features blocks hold whole s x s sub-pixel groups within 256 threads.
MAX_TILED_BACKWARD_SCALE = 8
VARIANTS = ("auto", "general", "tiled", "tiled_pair")


@dataclass(frozen=True)
class Launch:
    """One planned kernel launch.

    ``operands`` maps each pointer argument of the kernel to an index into the
    caller's tensors (``None``: no tensor, a null pointer with zero strides);
    ``tiling`` holds the trailing integer arguments of the tiled kernels.
    """

    module: str
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int
    operands: tuple[int | None, ...]
    tiling: tuple[int, ...] = ()

    @property
    def kernel_id(self) -> KernelId:
        return KernelId.parse(self.kernel)

    @property
    def blocks(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def threads_per_block(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]


# ---------------------------------------------------------------- variants

_variant_override: str | None = None


@contextlib.contextmanager
def forced_variant(name: str) -> Iterator[None]:
    """Run the kernels of one variant: "general" (one thread per element, any
    kernel size), "tiled" (one pixel per thread) or "tiled_pair" (two pixels per
    thread, vector access). A forced variant that cannot run raises ValueError.
    ``CARAFE_CUPY_KERNEL_VARIANT`` does the same process-wide."""
    global _variant_override
    if name not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {name!r}")
    previous, _variant_override = _variant_override, name
    try:
        yield
    finally:
        _variant_override = previous


def requested_variant() -> str:
    """The variant asked for: ``forced_variant``'s, else ``CARAFE_CUPY_KERNEL_VARIANT``'s
    (read on every call), else "auto"."""
    return _variant_override or _variant_variable()


def _variant_named(variable: str, value: str) -> str:
    name = value or "auto"
    if name not in VARIANTS:
        raise ValueError(f"{variable} must be one of {', '.join(VARIANTS)}, got {name!r}")
    return name


_variant_variable = _env.reader("CARAFE_CUPY_KERNEL_VARIANT", _variant_named)
