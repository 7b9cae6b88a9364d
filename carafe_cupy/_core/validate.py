"""Argument checks shared by every front end (no torch, no CuPy)."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any

from .geometry import SUPPORTED_DTYPES, Geometry

# The letters the docstrings use for the integer parameters (positional callers know them so).
_SYMBOLS = {
    "kernel_size": "k",
    "up_kernel": "k",
    "group_size": "G",
    "up_group": "G",
    "scale_factor": "s",
    "stride": "t",
    "dilation": "d",
}


def _int_hint(name: str, value: Any, minimum: int) -> str:
    """What to pass instead of a non-int number: never a truncation of a fractional one."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return ""
    number = float(value)
    if math.isfinite(number) and number.is_integer() and number >= minimum:
        return f" (pass {int(number)})"
    symbol = _SYMBOLS.get(name)
    label = f"{symbol} ({name})" if symbol else name
    return f"; {label} must be a whole number >= {minimum}, and {value!r} is not one"


def check_int(name: str, value: Any, minimum: int, where: str = "carafe") -> int:
    """An integer argument >= minimum. Floats (even 2.0) and bools are refused.

    ``where`` names the function or class the argument was given to, for the message.
    """
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(
            f"{where}: {name} must be an int, got {type(value).__name__} {value!r}"
            + _int_hint(name, value, minimum)
        )
    value = operator.index(value)
    if value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value}")
    return value


def check_odd(name: str, value: Any, where: str = "carafe") -> int:
    """A positive odd integer."""
    value = check_int(name, value, 1, where)
    if value % 2 == 0:
        raise ValueError(f"{where}: {name} must be odd, got {value}")
    return value


def check_params(
    kernel_size: Any,
    group_size: Any,
    scale_factor: Any,
    where: str = "carafe",
    names: tuple[str, str, str] = ("kernel_size", "group_size", "scale_factor"),
) -> tuple[int, int, int]:
    """(kernel_size, group_size, scale_factor) as ints; ``names`` are the caller's own
    names for them (CARAFEPack says up_kernel, up_group)."""
    kernel_size = check_odd(names[0], kernel_size, where)
    group_size = check_int(names[1], group_size, 1, where)
    scale_factor = check_int(names[2], scale_factor, 1, where)
    return kernel_size, group_size, scale_factor


def check_dtype(name: str, dtype_name: str, where: str = "carafe") -> None:
    if dtype_name not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{where}: {name} must have a floating dtype ({', '.join(SUPPORTED_DTYPES)}), "
            f"got {dtype_name}"
        )


def check_reassembly_params(
    kernel_size: Any,
    group_size: Any,
    scale_factor: Any,
    stride: Any = 1,
    dilation: Any = 1,
    where: str = "reassemble",
) -> tuple[int, int, int, int, int]:
    """(kernel_size, group_size, scale_factor, stride, dilation) as ints, with at
    most one of scale_factor and stride above 1."""
    kernel_size, group_size, scale_factor = check_params(
        kernel_size, group_size, scale_factor, where
    )
    stride = check_int("stride", stride, 1, where)
    dilation = check_int("dilation", dilation, 1, where)
    if scale_factor > 1 and stride > 1:
        raise ValueError(
            f"{where}: at most one of scale_factor and stride may exceed 1 (upsample or "
            f"downsample, not both); got scale_factor={scale_factor}, stride={stride}"
        )
    return kernel_size, group_size, scale_factor, stride, dilation


def weights_name(where: str) -> str:
    """What the caller calls its per-pixel weights: carafe's masks, reassemble's kernels."""
    return "masks" if where.startswith("carafe") else "kernels"


def check_geometry(
    features_shape: Sequence[int],
    masks_shape: Sequence[int],
    kernel_size: Any,
    group_size: Any,
    scale_factor: Any,
    stride: Any = 1,
    dilation: Any = 1,
    where: str = "carafe",
) -> Geometry:
    """Check shapes against the parameters and return the problem's geometry.

    ``where`` names the caller in the messages (and so its weights: masks or kernels)."""
    masks_name = weights_name(where)
    params = check_reassembly_params(kernel_size, group_size, scale_factor, stride, dilation, where)
    kernel_size, group_size, scale_factor, stride, dilation = params
    plain = stride == 1 and dilation == 1
    out_size = "H*s, W*s" if plain or scale_factor > 1 else "ceil(H/t), ceil(W/t)"
    for name, shape, layout in (
        ("features", features_shape, "(N, C, H, W)"),
        (masks_name, masks_shape, f"(N, G*k*k, {out_size})"),
    ):
        if len(shape) != 4:
            raise ValueError(
                f"{where}: {name} must be 4-D {layout}, got {len(shape)}-D shape {tuple(shape)}"
            )
    batch, channels, height, width = (int(size) for size in features_shape)
    if height < 1 or width < 1:
        raise ValueError(
            f"{where}: features must have H, W >= 1, got shape {tuple(features_shape)}"
        )
    if channels < 1:
        raise ValueError(
            f"{where}: features must have C >= 1 channels, got shape {tuple(features_shape)}"
        )
    if channels % group_size:
        raise ValueError(
            f"{where}: group_size must divide the feature channels C; got C={channels}, "
            f"group_size={group_size}"
        )
    geometry = Geometry(
        batch, channels, height, width, kernel_size, group_size, scale_factor, stride, dilation
    )
    expected = (batch, geometry.mask_channels, geometry.out_height, geometry.out_width)
    if tuple(int(size) for size in masks_shape) != expected:
        given = f"kernel_size={kernel_size}, group_size={group_size}, scale_factor={scale_factor}"
        if not plain:
            given += f", stride={stride}, dilation={dilation}"
        raise ValueError(
            f"{where}: {masks_name} must have shape (N, G*k*k, {out_size}) = {expected} for "
            f"features {tuple(features_shape)}, {given}; got {tuple(masks_shape)}"
        )
    check_index_range(geometry)
    return geometry


# The kernels index with signed 64-bit integers (sizes, strides, flat indices).
INDEX_MAX = 2**63 - 1


def check_index_range(geometry: Geometry) -> None:
    """Every element count the kernels iterate over must fit in int64."""
    out_pixels = geometry.out_height * geometry.out_width
    out_size = "(H*s)*(W*s)" if geometry.stride == 1 else "ceil(H/t)*ceil(W/t)"
    counts = (
        ("output", f"N*C*{out_size}", geometry.batch * geometry.channels * out_pixels),
        ("masks", f"N*G*k*k*{out_size}", geometry.batch * geometry.mask_channels * out_pixels),
    )
    for name, formula, count in counts:
        if count > INDEX_MAX:
            raise ValueError(
                f"carafe: the {name} would have {formula} = {count} elements, more than the "
                f"kernels' 64-bit indices address (at most 2**63 - 1 = {INDEX_MAX}); "
                f"got {geometry}"
            )
    # A window reaches (k - 1)*d/2 input pixels either side of its center, and the
    # kernels step between taps in multiples of d*t: both must stay within int64.
    g = geometry
    reach = (g.kernel_size - 1) * g.dilation + max(g.height, g.width)
    for culprit, formula, value in (
        (f"dilation ({g.dilation})", "(kernel_size - 1)*dilation + max(H, W)", reach),
        (
            f"dilation ({g.dilation}) with stride ({g.stride})",
            "dilation*stride",
            g.dilation * g.stride,
        ),
    ):
        if value > INDEX_MAX:
            raise ValueError(
                f"carafe: {culprit} is too large: the taps' offsets need {formula} = {value}, "
                f"more than the kernels' 64-bit indices address (at most 2**63 - 1 = "
                f"{INDEX_MAX}); got {geometry}"
            )


def check_grad_output_shape(
    grad_output_shape: Sequence[int], geometry: Geometry, where: str = "carafe_backward"
) -> None:
    expected = (geometry.batch, geometry.channels, geometry.out_height, geometry.out_width)
    if tuple(int(size) for size in grad_output_shape) != expected:
        raise ValueError(
            f"{where}: grad_output must have the output's shape {expected}, "
            f"got {tuple(grad_output_shape)}"
        )
