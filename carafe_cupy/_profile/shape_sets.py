"""Named problem sets for ``profile --shapes``, and the memory floor of the
unfold formulation the reassembly replaces.

* ``fpn``: CARAFE in an FPN, N2 C256 at five levels, with the command line's
  k, G and scale (and stride, dilation);
* ``rednet``: RedNet-style involution (k = 7, G = C/16): the stride-1
  involutions of the four ResNet stages, N8 C64 at 56x56 to C512 at 7x7, and
  the stride-2 ones that open stages 2-4 (C128 at 56x56 to C512 at 14x14);
* ``carafepp``: CARAFE++'s content-aware downsampler (CARAFEDownPack's
  defaults: k = 5, G = 1, stride 2) on N2 C256 at the three finest FPN levels.
"""

from __future__ import annotations

from .._plan.planner import Geometry

FPN_LEVELS = ((13, 21), (26, 42), (52, 84), (104, 168), (64, 64))
FPN_BATCH, FPN_CHANNELS = 2, 256

REDNET_BATCH, REDNET_KERNEL, REDNET_GROUP_CHANNELS = 8, 7, 16
# (channels, input size): stride-1 involutions per stage, then the stride-2 ones
REDNET_STRIDE_1 = ((64, 56), (128, 28), (256, 14), (512, 7))
REDNET_STRIDE_2 = ((128, 56), (256, 28), (512, 14))

CARAFEPP_BATCH, CARAFEPP_CHANNELS, CARAFEPP_KERNEL, CARAFEPP_STRIDE = 2, 256, 5, 2
CARAFEPP_LEVELS = ((104, 168), (52, 84), (26, 42))

# sets that carry their own k, G and stride (the command line's apply to fpn only)
FIXED_SETS = ("rednet", "carafepp")
SET_NAMES = ("fpn", *FIXED_SETS)


def rednet() -> list[Geometry]:
    geometries = []
    for stride, stages in ((1, REDNET_STRIDE_1), (2, REDNET_STRIDE_2)):
        for channels, size in stages:
            groups = channels // REDNET_GROUP_CHANNELS
            geometries.append(
                Geometry(REDNET_BATCH, channels, size, size, REDNET_KERNEL, groups, 1, stride)
            )
    return geometries


def carafepp() -> list[Geometry]:
    return [
        Geometry(
            CARAFEPP_BATCH, CARAFEPP_CHANNELS, h, w, CARAFEPP_KERNEL, 1, 1, CARAFEPP_STRIDE
        )
        for h, w in CARAFEPP_LEVELS
    ]


def fixed_set(name: str) -> list[Geometry]:
    return {"rednet": rednet, "carafepp": carafepp}[name]()


def unfold_floor_bytes(geometry: Geometry, itemsize: int) -> tuple[int, int]:
    """(forward, forward + backward) bytes the unfold formulation moves at least.

    Forward: unfold writes U = N*C*k*k*Ho*Wo elements, the product with the
    kernels reads U and writes U more, the sum over taps reads that; with the
    features, kernels and output once each: F + K + O + 4U. Backward (autograd
    of the same ops): the features' gradient U written, read by fold; the
    kernels' gradient a U-sized product of U and the upstream gradient, written
    and summed: F + 2K + 2O + 5U. Each tensor counted once per op that touches
    it, so this is a floor for the standard ops, not a model of their kernels.
    """
    g = geometry
    out = g.batch * g.channels * g.out_height * g.out_width
    unfolded = out * g.kernel_size * g.kernel_size
    features = g.batch * g.channels * g.height * g.width
    kernels = g.batch * g.mask_channels * g.out_height * g.out_width
    forward = features + kernels + out + 4 * unfolded
    backward = features + 2 * kernels + 2 * out + 5 * unfolded
    return forward * itemsize, (forward + backward) * itemsize


def unfold_peak_bytes(geometry: Geometry, itemsize: int) -> int:
    """Memory the unfold formulation's forward holds beyond its inputs and output:
    the unfolded windows and their product with the kernels (2U)."""
    g = geometry
    return 2 * g.batch * g.channels * g.out_height * g.out_width * g.kernel_size**2 * itemsize
