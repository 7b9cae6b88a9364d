"""What a plan is made of: the call's geometry, a tensor as the planner sees it,
one planned launch, the launch limits, and the kernel variant a caller asks for.
Pure Python; ``_planner`` builds plans from these and re-exports them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

THREADS_PER_BLOCK = 256
# Kernels use grid-stride loops, so the grid can be capped without losing work.
MAX_BLOCKS = 1 << 20
MAX_GRID_X = 2**31 - 1  # CUDA's limit on gridDim.x
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}
ACCUMULATOR_SIZE = {"float32": 4, "float64": 8, "float16": 4, "bfloat16": 4}
TILE_THREADS = (32, 8)  # CARAFE_TILE_THREADS_X / _Y in carafe_tiled.cuh
CHANNEL_BATCH_MAX = 4  # CARAFE_CHANNEL_BATCH_MAX
# The general forward and grad_features: channels per thread
# (FORWARD_CHANNEL_STRIP and GRAD_FEATURES_CHANNEL_STRIP in carafe.cu).
GENERAL_FORWARD_STRIP = 4
GENERAL_FEATURES_STRIP = 2
# The general grad_masks: taps per thread (TAP_STRIP in carafe.cu).
GENERAL_TAP_STRIP = 4
SHARED_MEMORY_LIMIT = 48 * 1024  # dynamic shared memory without an opt-in
# grad_features blocks hold whole s x s sub-pixel groups within 256 threads.
MAX_TILED_BACKWARD_SCALE = 8
VARIANTS = ("auto", "general", "tiled", "tiled_pair")


@dataclass(frozen=True)
class Geometry:
    """Sizes of one reassembly problem (already validated).

    Output pixel (y, x) reads the window centered on input pixel
    ((y // s) * t, (x // s) * t) with taps d apart (s scale_factor, t stride,
    d dilation; at most one of s and t exceeds 1). CARAFE is t = d = 1.
    """

    batch: int
    channels: int
    height: int
    width: int
    kernel_size: int
    group_size: int
    scale_factor: int
    stride: int = 1
    dilation: int = 1

    @property
    def center_height(self) -> int:
        """Rows of window centers: ceil(H / t)."""
        return -(-self.height // self.stride)

    @property
    def center_width(self) -> int:
        return -(-self.width // self.stride)

    @property
    def out_height(self) -> int:
        return self.center_height * self.scale_factor

    @property
    def out_width(self) -> int:
        return self.center_width * self.scale_factor

    @property
    def is_carafe(self) -> bool:
        """Stride 1 and dilation 1: the tiled kernels' geometry."""
        return self.stride == 1 and self.dilation == 1

    @property
    def mask_channels(self) -> int:
        return self.group_size * self.kernel_size * self.kernel_size

    @property
    def sizes(self) -> tuple[int, ...]:
        """The seven sizes in the order every kernel takes them (the tiled ones
        take only these: they run stride 1, dilation 1)."""
        return (
            self.batch,
            self.channels,
            self.height,
            self.width,
            self.kernel_size,
            self.group_size,
            self.scale_factor,
        )

    @property
    def general_sizes(self) -> tuple[int, ...]:
        """The nine sizes the general kernels take: ``sizes``, stride, dilation."""
        return (*self.sizes, self.stride, self.dilation)


@dataclass(frozen=True)
class TensorRef:
    """A 4-D array as the kernels see it: address, element strides, dtype."""

    pointer: int
    strides: tuple[int, int, int, int]
    dtype: str


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
    name = _variant_override or os.environ.get("CARAFE_CUPY_KERNEL_VARIANT", "") or "auto"
    if name not in VARIANTS:
        raise ValueError(
            f"CARAFE_CUPY_KERNEL_VARIANT must be one of {', '.join(VARIANTS)}, got {name!r}"
        )
    return name
