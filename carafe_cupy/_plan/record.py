"""A record of kernel launches, for tests that check which plans actually ran.

:func:`note_launch` is called by the launcher for every launch; it does nothing
unless a :func:`recording` is active. A :class:`LaunchRecord` says which kernel
ran and how the planner tiled it (tiles, channel batch, channel slices), decoded
from the launch arguments themselves, and :func:`plan_branches` names the
planner decisions the launch shows. ``PLAN_BRANCHES`` lists every such name, so
a test can demand that each one is taken.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .._kernels.constants import TILE_THREADS
from .._kernels.names import (
    TILED_KERNEL_SIZES,
    KernelId,
    features_quads_instantiated,
    pairs_instantiated,
)

# Kernels whose block owns a tile of input pixels, s x s threads each.
_INPUT_TILED = ("grad_features", "fused_grad_features")
_OUTPUT_TILE = TILE_THREADS  # threads per output tile (x, y), times 2 in x for pairs
# Kernels whose block owns one output row, its warps splitting the channels.
_OUTPUT_ROW = ("grad_masks", "fused_grad_logits")


@dataclass(frozen=True)
class LaunchRecord:
    """One kernel launch, as the planner shaped it."""

    module: str
    kernel: str
    operation: str  # forward, grad_features, grad_masks, fused_*
    dtype: str
    kernel_size: int
    scale_factor: int
    variant: str  # general, tiled, tiled_pair, fused
    requested: str  # the variant asked for: auto, general, tiled, tiled_pair
    batch: int
    channels: int
    group_size: int
    tiles_x: int = 0
    tiles_y: int = 0
    channel_batch: int = 0  # channels staged per shared-memory batch
    channel_slices: int = 0  # blocks (grad_masks: warps) sharing one group's channels
    channel_batches: int = 0  # staging rounds per block
    partial_batch: bool = False  # a last batch with fewer channels than channel_batch
    stride: int = 1  # window stride and dilation (general kernels only; tiled: 1)
    dilation: int = 1
    pixels: int = 1  # pixels per thread (2: pairs; 4: grad_features' quads)


_lock = threading.Lock()
_active: list[list[LaunchRecord]] = []
active = _active  # the same list, empty unless recording: the launcher tests it per launch


@contextlib.contextmanager
def recording() -> Iterator[list[LaunchRecord]]:
    """Collect a :class:`LaunchRecord` for every launch until the block ends."""
    records: list[LaunchRecord] = []
    with _lock:
        _active.append(records)
    try:
        yield records
    finally:
        with _lock:
            _active.remove(records)


def note_launch(
    module: str, kernel: str, block: tuple, args: tuple, requested: Callable[[], str]
) -> None:
    """Called by the launcher for each launch; cheap when nothing records.
    ``requested`` returns the variant asked for (it reads the environment)."""
    if not _active:
        return
    record = decode_launch(module, kernel, block, args, requested())
    with _lock:
        for records in _active:
            records.append(record)


def decode_launch(
    module: str, kernel: str, block: tuple, args: tuple, requested: str
) -> LaunchRecord:
    """The :class:`LaunchRecord` of a launch, from its kernel name and arguments."""
    identity = KernelId.parse(kernel)
    operation, variant = identity.operation, identity.variant
    if variant == "general":
        # 3 pointers, then batch, channels, height, width, k, G, s, stride, dilation
        n, c, _, _, k, g, s, t, d = (int(value) for value in args[3:12])
        return LaunchRecord(
            module,
            kernel,
            operation,
            identity.dtype,
            k,
            s,
            "general",
            requested,
            n,
            c,
            g,
            stride=t,
            dilation=d,
        )
    # 4 pointers, 7 sizes, 16 strides, then channels per block and channel batch
    n, c, h, w, k, g, s = (int(value) for value in args[4:11])
    per_block, channel_batch = int(args[27]), int(args[28])
    pairs = identity.columns
    if operation in _INPUT_TILED and identity.pixels == 4:  # four input pixels a thread, s = 2
        tile_cols, tile_rows = block[0] // (s * s) * identity.pixels, block[1]
        tiles_x, tiles_y = -(-w // tile_cols), -(-h // tile_rows)
    elif operation in _INPUT_TILED:
        tile_cols, tile_rows = block[0] // s, block[1] // s
        tiles_x, tiles_y = -(-w // tile_cols), -(-h // tile_rows)
    else:
        tiles_x = -(-(w * s) // (_OUTPUT_TILE[0] * pairs))
        rows = identity.pixels // identity.columns  # output rows a thread takes
        tile_rows = block[1] * rows  # the 2 x 2 forward: 4 thread rows, 8 pixel rows
        tiles_y = h * s // rows if operation in _OUTPUT_ROW else -(-(h * s) // tile_rows)
    per_group = c // g
    per_block = max(1, min(per_block, per_group))
    return LaunchRecord(
        module,
        kernel,
        operation,
        identity.dtype,
        k,
        s,
        variant,
        requested,
        n,
        c,
        g,
        tiles_x,
        tiles_y,
        channel_batch,
        -(-per_group // per_block),
        -(-per_block // channel_batch) if per_group else 0,
        per_block % channel_batch != 0 or (per_group % per_block) % channel_batch != 0,
        pixels=identity.pixels,
    )


# Every planner decision a launch can show. "why" names say why a launch took
# a slower variant than the best one built; tiling names say how a tiled
# launch split its work.
PLAN_BRANCHES = (
    "general: forced",
    "general: kernel size has no tiled kernels",
    "general: no channels (grad_masks is zeros)",
    "general: no tiled plan fits (scale too large)",
    "general: stride or dilation above 1 (no tiled kernels)",
    "strided windows",
    "dilated windows",
    "strided and dilated windows",
    "tiled: forced",
    "tiled: odd scale, no pairs",
    "tiled: pairs not built for this dtype and kernel size",
    "tiled: tensors not pair-aligned",
    "tiled_pair: auto",
    "tiled_pair: forced",
    "grad_features: four pixels per thread",
    "grad_features: one pixel per thread fits the grid better",
    "grad_masks: one kernel row a block fits the grid better",
    "fused",
    "channel batch 1",
    "channel batch 2",
    "channel batch 3",
    "channel batch 4",
    "partial channel batch",
    "several channel batches per block",
    "several channel slices",
    "several tiles in x",
    "several tiles in y",
)


def plan_branches(record: LaunchRecord) -> set[str]:
    """The names (from ``PLAN_BRANCHES``) of the decisions this launch shows."""
    branches = set()
    if record.variant == "general":
        if record.channels == 0:
            branches.add("general: no channels (grad_masks is zeros)")
        elif record.requested == "general":
            branches.add("general: forced")
        elif record.kernel_size not in TILED_KERNEL_SIZES:
            branches.add("general: kernel size has no tiled kernels")
        elif record.stride > 1 or record.dilation > 1:
            branches.add("general: stride or dilation above 1 (no tiled kernels)")
        else:
            branches.add("general: no tiled plan fits (scale too large)")
        windows = {
            (True, False): "strided windows",
            (False, True): "dilated windows",
            (True, True): "strided and dilated windows",
        }.get((record.stride > 1, record.dilation > 1))
        if windows:
            branches.add(windows)
        return branches
    four_pixels = record.pixels == 4 and record.operation in _INPUT_TILED
    if four_pixels:
        branches.add("grad_features: four pixels per thread")
    if KernelId.parse(record.kernel).tap_rows == 1:
        branches.add("grad_masks: one kernel row a block fits the grid better")
    if record.variant == "fused":
        branches.add("fused")
    elif four_pixels:
        pass  # the one layout grad_features has, whichever tiled variant was asked for
    elif record.variant == "tiled_pair":
        branches.add(
            "tiled_pair: forced" if record.requested == "tiled_pair" else "tiled_pair: auto"
        )
    elif record.requested == "tiled":
        branches.add("tiled: forced")
    elif (
        record.operation == "grad_features"
        and record.scale_factor == 2
        and features_quads_instantiated(record.dtype, record.kernel_size)
    ):  # the four-pixel kernel runs here, but its grid fits the GPU worse
        branches.add("grad_features: one pixel per thread fits the grid better")
    elif record.scale_factor % 2:
        branches.add("tiled: odd scale, no pairs")
    elif not pairs_instantiated(record.dtype, record.kernel_size):
        branches.add("tiled: pairs not built for this dtype and kernel size")
    else:
        branches.add("tiled: tensors not pair-aligned")
    branches.add(f"channel batch {record.channel_batch}")
    if record.partial_batch:
        branches.add("partial channel batch")
    if record.channel_batches > 1:
        branches.add("several channel batches per block")
    if record.channel_slices > 1:
        branches.add("several channel slices")
    if record.tiles_x > 1:
        branches.add("several tiles in x")
    if record.tiles_y > 1:
        branches.add("several tiles in y")
    unknown = branches.difference(PLAN_BRANCHES)
    if unknown:
        raise ValueError(f"launch record: undeclared plan branches {sorted(unknown)}")
    return branches
