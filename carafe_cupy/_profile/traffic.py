"""Memory traffic of planned launches, measured by running them in the CPU
simulator with the memory-access tracer (``carafe_cupy._sim.trace``).

A launch is simulated on a reduced problem that keeps its spatial size and its
plan (kernel, block, shared memory, channels per block and batch) but has one
image and one channel slice per group; its counts are multiplied by the blocks
left out (images x slices), which is exact when every slice is full. Big grids
may also be sampled (``max_blocks``): counts are then scaled by blocks run over
blocks traced, which treats the sampled tiles as typical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from unittest import mock

import numpy as np

from .._plan import planner as _planner
from .._plan.planner import DEFAULT_TARGET, Geometry, Launch, PlanTarget, TensorRef

ROLES = {
    "forward": ("features", "masks", "output"),
    "backward": ("grad_output", "features", "masks", "grad_features", "grad_masks"),
    "fused_forward": ("features", "logits", "output"),
    "fused_backward": ("grad_output", "features", "logits", "grad_features", "grad_logits"),
}
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}


def role_shape(role: str, g: Geometry) -> tuple[int, int, int, int]:
    if role in ("features", "grad_features"):
        return (g.batch, g.channels, g.height, g.width)
    if role in ("masks", "grad_masks"):
        return (g.batch, g.mask_channels, g.out_height, g.out_width)
    if role in ("output", "grad_output"):
        return (g.batch, g.channels, g.out_height, g.out_width)
    taps = g.mask_channels * g.scale_factor**2
    return (g.batch, taps, g.height, g.width)  # logits, grad_logits


def _contiguous(shape: tuple[int, ...], dtype: str) -> TensorRef:
    n, c, h, w = shape
    return TensorRef(0x10000, (c * h * w, h * w, w, 1), dtype)


def planned(
    op: str, geometry: Geometry, dtype: str, target: PlanTarget = DEFAULT_TARGET
) -> tuple[Launch, ...]:
    """The launches the launcher makes for ``op`` on contiguous, aligned tensors,
    on the ``target`` GPU."""
    refs = [_contiguous(role_shape(role, geometry), dtype) for role in ROLES[op]]
    if op in ("forward", "backward", "fused_forward"):
        return getattr(_planner, f"plan_{op}")(geometry, *refs, target)
    return getattr(_planner, f"plan_{op}")(geometry, dtype, target)


def tensor_bytes(role: str, geometry: Geometry, dtype: str) -> int:
    return int(np.prod(role_shape(role, geometry))) * ITEMSIZE[dtype]


INPUTS = ("features", "masks", "logits", "grad_output")
# grad_masks and the fused logits gradient: their tiling gives channels per warp
# (subset), and one block sums all of its group's channels (no channel slices).
OUTPUT_ROW_KERNELS = ("grad_masks", "fused_grad_logits")


def compulsory_bytes(
    op: str, launch: Launch, geometry: Geometry, dtype: str, inputs_only: bool = False
) -> int:
    """Bytes the launch must move at least once: every tensor it is given (or
    every tensor it reads, with ``inputs_only``)."""
    roles = {ROLES[op][index] for index in launch.operands if index is not None}
    if inputs_only:
        roles &= set(INPUTS)
    return sum(tensor_bytes(role, geometry, dtype) for role in roles)


@dataclass(frozen=True)
class Traffic:
    """Scaled to the full launch."""

    load_bytes: float
    store_bytes: float
    load_requests: float
    store_requests: float
    load_sectors: float
    store_sectors: float
    shared_requests: float
    bank_conflicts: float
    exact: bool  # False when blocks were sampled or a slice is partial
    simulated: str  # what ran: "N1 C16, 39 of 39 blocks"

    # shared memory per direction: (wavefronts, bank conflicts), for the conflict factors
    shared_load: tuple[float, float] = (0.0, 0.0)
    shared_store: tuple[float, float] = (0.0, 0.0)

    @property
    def sectors(self) -> float:
        return self.load_sectors + self.store_sectors

    @staticmethod
    def conflict_factor(wavefronts: float, conflicts: float) -> float:
        """Wavefronts over the conflict-free count (1 without conflicts or accesses)."""
        minimum = wavefronts - conflicts
        return wavefronts / minimum if minimum > 0 else 1.0


def _reduced(launch: Launch, geometry: Geometry) -> tuple[Geometry, Launch, float, bool]:
    """One image and one channel slice per group; the factor that scales back."""
    per_group = geometry.channels // geometry.group_size
    if len(launch.tiling) == 2:
        per_block = launch.tiling[0]
        if launch.kernel_id.operation in OUTPUT_ROW_KERNELS:
            per_block = per_group  # channels per warp: a block's warps share the group
        slices = -(-per_group // per_block)
        channels = geometry.group_size * min(per_block, per_group)
        blocks = launch.blocks // (geometry.batch * slices)
        exact = per_group % per_block == 0
        factor = geometry.batch * slices
    else:  # the general kernels: one image, all channels
        channels, exact, factor = geometry.channels, True, geometry.batch
        blocks = -(-launch.blocks // geometry.batch)
        exact = launch.blocks % geometry.batch == 0
    small = replace(geometry, batch=1, channels=channels)
    return small, replace(launch, grid=(blocks, 1, 1)), float(factor), exact


def simulate(
    op: str, launch: Launch, geometry: Geometry, dtype: str, max_blocks: int | None = None
) -> Traffic:
    """Run ``launch`` reduced in the traced simulator; counts scaled to the full launch."""
    from .._array import refs as _arrays
    from .._runtime import launch as _launch
    from .._sim.trace import tracing

    small, reduced, factor, exact = _reduced(launch, geometry)
    rng = np.random.default_rng(0)
    numpy_dtype = np.float32 if dtype == "bfloat16" else np.dtype(dtype)
    arrays = [
        rng.random(role_shape(role, small)).astype(numpy_dtype) for role in ROLES[op]
    ]
    if dtype == "bfloat16":  # numpy has no bfloat16: the kernels read raw 16-bit words
        arrays = [array.view(np.uint32).astype(np.uint16) for array in arrays]
    refs = tuple(replace(_arrays.array_ref(array), dtype=dtype) for array in arrays)
    args = _launch.launch_arguments(reduced, small, refs)
    simulator_on = mock.patch.dict(os.environ, {"CARAFE_CUPY_SIMULATOR": "1"})
    with simulator_on, tracing(max_blocks=max_blocks, run_all_blocks=False) as traces:
        _launch.launch(
            reduced.kernel, reduced.grid, reduced.block, args, reduced.shared_mem, 0, 0,
            reduced.module,
        )
    (trace,) = traces
    sampled = trace.blocks_total / max(1, trace.blocks_traced)
    scale = factor * sampled
    return Traffic(
        load_bytes=trace.global_load.bytes * scale,
        store_bytes=trace.global_store.bytes * scale,
        load_requests=trace.global_load.requests * scale,
        store_requests=trace.global_store.requests * scale,
        load_sectors=trace.global_load.sectors * scale,
        store_sectors=trace.global_store.sectors * scale,
        shared_requests=(trace.shared_load.requests + trace.shared_store.requests) * scale,
        bank_conflicts=(trace.shared_load.bank_conflicts + trace.shared_store.bank_conflicts)
        * scale,
        shared_load=(trace.shared_load.sectors * scale, trace.shared_load.bank_conflicts * scale),
        shared_store=(
            trace.shared_store.sectors * scale, trace.shared_store.bank_conflicts * scale
        ),
        exact=exact and trace.blocks_traced == trace.blocks_total,
        simulated=(
            f"N1 C{small.channels}, {trace.blocks_traced} of {trace.blocks_total} blocks"
        ),
    )
