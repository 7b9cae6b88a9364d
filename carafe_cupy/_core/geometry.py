"""A reassembly problem's sizes, a tensor as the kernels see it, and the dtypes
the kernels are built for. Pure Python: every layer above reads these."""

from __future__ import annotations

from dataclasses import dataclass

SUPPORTED_DTYPES = ("float32", "float64", "float16", "bfloat16")
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}
ACCUMULATOR_SIZE = {"float32": 4, "float64": 8, "float16": 4, "bfloat16": 4}


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
