"""A kernel's identity: which operation, dtype, kernel size and pixels per thread.

:class:`KernelId` is the one place that builds a kernel's name and its NVRTC
module, and parses a name back: the planner, the launch record, the cost model
and the source list all go through it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .._core.geometry import SUPPORTED_DTYPES

KERNEL_MODULE = "carafe"  # the general kernels, every dtype, any kernel size
TILED_KERNEL_SIZES = (3, 5, 7)

# operation -> (general kernel's stem, tiled kernel's stem)
_STEMS: dict[str, tuple[str | None, str]] = {
    "forward": ("carafe_forward", "carafe_forward_tiled"),
    "grad_features": ("carafe_backward_features", "carafe_backward_features_tiled"),
    "grad_masks": ("carafe_backward_masks", "carafe_backward_masks_tiled"),
    "fused_forward": (None, "carafe_fused_forward"),
    "fused_grad_logits": (None, "carafe_fused_backward_logits"),
    "fused_grad_features": (None, "carafe_fused_backward_features"),
}
OPERATIONS = tuple(_STEMS)
# Tiled kernels whose name always carries the pixels per thread (_p1, _p2 or _p4).
_ALWAYS_PAIRED = ("forward", "grad_masks")
_DTYPES = "|".join(SUPPORTED_DTYPES)
_GENERAL_NAME = re.compile(
    rf"({'|'.join(stem for stem, _ in _STEMS.values() if stem)})_({_DTYPES})"
)
_TILED_NAME = re.compile(
    rf"({'|'.join(stem for _, stem in _STEMS.values())})_k(\d+)(?:_p([124]))?(?:_r(1))?_({_DTYPES})"
)
_TILED_MODULE = re.compile(rf"carafe_tiled_({_DTYPES})_k(\d+)")


@dataclass(frozen=True)
class KernelId:
    """One ``__global__`` function. ``kernel_size`` None: a general kernel (any k)."""

    operation: str
    dtype: str
    kernel_size: int | None = None
    pixels: int = 1  # pixels per thread (4: the forwards' and grad_masks' 2 x 2
    # outputs or grad_features' four input pixels)
    tap_rows: int = 0  # kernel rows a block sums (0: all; 1: grad_masks' _r1 blocks)

    @property
    def variant(self) -> str:
        """general, tiled, tiled_pair or fused."""
        if self.kernel_size is None:
            return "general"
        if self.operation.startswith("fused"):
            return "fused"
        return "tiled_pair" if self.pixels > 1 else "tiled"

    @property
    def columns(self) -> int:
        """Output pixels per thread along x (the 2 x 2 kernels take two rows too)."""
        return 2 if self.pixels == 4 else self.pixels

    @property
    def module(self) -> str:
        """The NVRTC module that holds it."""
        if self.kernel_size is None:
            return KERNEL_MODULE
        return tiled_module_name(self.dtype, self.kernel_size)

    @property
    def name(self) -> str:
        general, tiled = _STEMS[self.operation]
        if self.kernel_size is None:
            return f"{general}_{self.dtype}"
        pixels = ""
        if self.operation in _ALWAYS_PAIRED or self.pixels > 1:
            pixels = f"_p{self.pixels}"
        rows = f"_r{self.tap_rows}" if self.tap_rows else ""
        return f"{tiled}_k{self.kernel_size}{pixels}{rows}_{self.dtype}"

    @classmethod
    def parse(cls, name: str) -> KernelId:
        """The kernel a name stands for (ValueError for a name of no known family)."""
        by_stem = {
            stem: (operation, i)
            for operation, stems in _STEMS.items()
            for i, stem in enumerate(stems)
            if stem
        }
        general = _GENERAL_NAME.fullmatch(name)
        if general is not None:
            return cls(by_stem[general.group(1)][0], general.group(2))
        tiled = _TILED_NAME.fullmatch(name)
        if tiled is not None:
            kernel = cls(
                by_stem[tiled.group(1)][0],
                tiled.group(5),
                int(tiled.group(2)),
                int(tiled.group(3) or 1),
                int(tiled.group(4) or 0),
            )
            if kernel.name == name:
                return kernel
        raise ValueError(f"kernel {name!r} is of no known family")


def tiled_module_name(dtype: str, kernel_size: int) -> str:
    return f"carafe_tiled_{dtype}_k{kernel_size}"


def parse_tiled_module(module_name: str) -> tuple[str, int] | None:
    """(dtype, kernel size) of a tiled module's name, or None."""
    match = _TILED_MODULE.fullmatch(module_name)
    return None if match is None else (match.group(1), int(match.group(2)))


def pairs_instantiated(dtype: str, kernel_size: int) -> bool:
    """Two pixels per thread doubles the mask registers: built for K <= 5, not fp64."""
    return dtype != "float64" and kernel_size <= 5


def features_quads_instantiated(dtype: str, kernel_size: int) -> bool:
    """grad_features with four input pixels per thread holds 4 k² masks: built
    where pairs are (K <= 5, not fp64), unfused only (the fused one would spill);
    it runs s = 2 only."""
    return pairs_instantiated(dtype, kernel_size)


def fused_instantiated(dtype: str, kernel_size: int) -> bool:
    """fp64 with K >= 5 would spill in the fused kernels: it takes the unfused path."""
    return dtype != "float64" or kernel_size == 3


def general_kernels(dtype: str) -> tuple[KernelId, KernelId, KernelId]:
    """Forward, grad_features and grad_masks of the general module."""
    return tuple(KernelId(operation, dtype) for operation in OPERATIONS[:3])  # type: ignore[return-value]


def tiled_kernels(dtype: str, kernel_size: int) -> list[KernelId]:
    """Every kernel a tiled module builds, in the order the module defines them."""
    k = kernel_size
    kernels = [
        KernelId("forward", dtype, k),
        KernelId("grad_masks", dtype, k),
        KernelId("grad_features", dtype, k),
    ]
    if fused_instantiated(dtype, k):
        kernels += [KernelId(op, dtype, k) for op in OPERATIONS[3:]]
    if pairs_instantiated(dtype, k):
        # even s: the forward, the fused forward and grad_masks take 2 x 2 pixels a thread
        kernels += [KernelId("forward", dtype, k, 4), KernelId("grad_masks", dtype, k, 4)]
        if fused_instantiated(dtype, k):
            kernels.append(KernelId("fused_forward", dtype, k, 4))
    if features_quads_instantiated(dtype, k):
        kernels.append(KernelId("grad_features", dtype, k, 4))
    if masks_rows_instantiated(dtype, k):
        kernels.append(KernelId("grad_masks", dtype, k, 4, 1))  # one kernel row a block
    return kernels


def masks_rows_instantiated(dtype: str, kernel_size: int) -> bool:
    """grad_masks 2 x 2 in one-kernel-row blocks (_r1): built where pairs are, for
    k = 5 (the shape class whose short grids it serves)."""
    return pairs_instantiated(dtype, kernel_size) and kernel_size == 5
