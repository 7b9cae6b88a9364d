"""Sizes checked before anything is allocated (no torch, no CuPy).

An output, workspace or module weight larger than the memory of the device it
would live on can never be allocated. Asking anyway fails deep inside an
allocator, or, where the OS overcommits memory, lets the allocation succeed and
the first write get the process killed. These checks refuse such a request
first, with a ValueError that names what sets the size and the bytes it needs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .geometry import Geometry

# Where a cgroup caps this process's memory (v2, then v1); "max" or a huge number means no cap.
_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)


# Open descriptors of the limit files, by path: a positioned read of an open cgroup file
# costs one system call, where opening it again each call cost tens of microseconds.
# A file found missing (another cgroup version) is not looked for again.
_open_limits: dict[Path, int] = {}
_missing_limits: set[Path] = set()


def _read_limit(path: Path) -> bytes:
    descriptor = _open_limits.get(path)
    if descriptor is not None:
        try:
            return os.pread(descriptor, 64, 0)
        except OSError:
            _open_limits.pop(path, None)  # closed under us or gone: open it again
    if path in _missing_limits:
        raise FileNotFoundError(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        _missing_limits.add(path)
        raise
    text = os.pread(descriptor, 64, 0)
    if _open_limits.setdefault(path, descriptor) != descriptor:
        os.close(descriptor)  # another thread kept its own
    return text


def _cgroup_limit() -> int | None:
    for path in _CGROUP_LIMITS:
        try:
            text = _read_limit(path).strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def host_memory_bytes() -> int | None:
    """This machine's physical memory, or this process's cgroup limit where that is
    lower; None where neither can be read (then nothing is refused)."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        physical = None
    capped = _cgroup_limit()
    known = [size for size in (physical, capped) if size is not None and size > 0]
    return min(known) if known else None


def format_bytes(count: int) -> str:
    """``count`` in decimal units, e.g. 57.6 GB."""
    size = float(count)
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if size < 1000 or unit == "PB":
            return f"{count} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def check_fits(
    where: str,
    parts: Sequence[tuple[str, int]],
    capacity: int | None,
    device: str,
    cause: str,
) -> None:
    """Refuse allocations of ``parts`` ((what, bytes) pairs) that together exceed
    ``capacity`` bytes, the whole memory of ``device`` (None: unknown, allowed).

    ``cause`` names the arguments that set the sizes, for the message."""
    total = sum(size for _, size in parts)
    if capacity is None or total <= capacity:
        return
    if len(parts) == 1:
        listing = f"{parts[0][0]} would take {total} bytes ({format_bytes(total)})"
    else:
        listing = " and ".join(f"{what} ({size} bytes)" for what, size in parts)
        listing += f" would take {total} bytes ({format_bytes(total)}) in all"
    raise ValueError(
        f"{where}: {listing}, more than all the memory of {device} ({capacity} bytes, "
        f"{format_bytes(capacity)}); {cause}"
    )


def shape_text(shape: Sequence[int]) -> str:
    return str(tuple(int(size) for size in shape))


def _parameters(geometry: Geometry) -> str:
    g = geometry
    text = f"kernel_size={g.kernel_size}, group_size={g.group_size}, scale_factor={g.scale_factor}"
    return text if g.is_carafe else f"{text}, stride={g.stride}, dilation={g.dilation}"


def reassembly_parts(
    geometry: Geometry, itemsize: int, backward: bool, weights: str = "masks"
) -> list[tuple[str, int]]:
    """What a call allocates for its results: the output, or the two gradients."""
    g = geometry
    out_pixels = g.out_height * g.out_width
    output = (g.batch, g.channels, g.out_height, g.out_width)
    weights_shape = (g.batch, g.mask_channels, g.out_height, g.out_width)
    if weights == "logits":  # the fused op's (N, G*k*k*s*s, H, W)
        weights_shape = (g.batch, g.mask_channels * g.scale_factor**2, g.height, g.width)
    if not backward:
        return [(f"the output {output}", g.batch * g.channels * out_pixels * itemsize)]
    features_shape = (g.batch, g.channels, g.height, g.width)
    return [
        (f"grad_features {features_shape}", g.batch * g.channels * g.height * g.width * itemsize),
        (f"grad_{weights} {weights_shape}", g.batch * g.mask_channels * out_pixels * itemsize),
    ]


def reassembly_cause(geometry: Geometry, dtype: str) -> str:
    """Which arguments set a call's sizes, for check_fits's message."""
    g = geometry
    size = "(H*s)*(W*s)" if g.stride == 1 else "ceil(H/t)*ceil(W/t)"
    features = (g.batch, g.channels, g.height, g.width)
    return (
        f"in {dtype}, the output has N*C*{size} elements and the masks N*G*k*k*{size}: "
        f"features {features}, {_parameters(g)}"
    )
