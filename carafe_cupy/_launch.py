"""Compile and launch the CUDA kernels in ``cuda_src/``.

This is the only module that imports CuPy. Front ends describe their tensors
as :class:`TensorRef` (raw pointer, element strides, dtype name) and call
:func:`launch_forward` / :func:`launch_backward`; this module picks the kernel,
computes the launch shape, marshals the arguments and hands them to a runtime:
CuPy/NVRTC on a GPU, or the CPU simulator when ``CARAFE_CUPY_SIMULATOR=1``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _gpu_checks

KERNEL_MODULE = "carafe"
SUPPORTED_DTYPES = ("float32", "float64", "float16", "bfloat16")
THREADS_PER_BLOCK = 256
# Kernels use grid-stride loops, so the grid can be capped without losing work.
MAX_BLOCKS = 1 << 20
MAX_GRID_X = 2**31 - 1  # CUDA's limit on gridDim.x
NVRTC_OPTIONS = ("-std=c++17",)


class KernelCompileError(RuntimeError):
    """NVRTC (or the simulator's compiler) rejected a kernel source."""


class KernelsUnavailableError(RuntimeError):
    """CuPy or NVRTC cannot be used on this machine."""


# ---------------------------------------------------------------- sources


def cuda_source_dir() -> Path:
    """Where the ``.cu`` files are: inside the installed package, or the repository."""
    packaged = Path(__file__).resolve().parent / "cuda_src"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "cuda_src"


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)


@functools.cache
def kernel_source(module_name: str = KERNEL_MODULE) -> str:
    """The module's source with local ``#include "..."`` expanded.

    Expanding here keeps the compiler free of include paths and makes the
    source text (CuPy's disk-cache key) change whenever a header does.
    """
    directory = cuda_source_dir()
    included: set[str] = set()

    def expand(name: str) -> str:
        if name in included:
            return ""
        included.add(name)
        text = (directory / name).read_text()
        text = text.replace("#pragma once", "")
        return _INCLUDE.sub(lambda match: expand(match.group(1)), text)

    match = _TILED_MODULE.fullmatch(module_name)
    if match is None:
        return expand(f"{module_name}.cu")
    dtype, kernel_size = match.group(1), int(match.group(2))
    header = (
        f"#define CARAFE_TILED_SUFFIX {dtype}\n"
        f"#define CARAFE_TILED_SCALAR {_SCALAR_TYPES[dtype]}\n"
        f"#define CARAFE_TILED_K {kernel_size}\n"
        f"#define CARAFE_TILED_PAIRS {int(pairs_instantiated(dtype, kernel_size))}\n"
        f"#define CARAFE_TILED_FUSED {int(fused_instantiated(dtype, kernel_size))}\n"
    )
    return header + expand("carafe_tiled.cu")


# ---------------------------------------------------------------- tiled modules

TILED_KERNEL_SIZES = (3, 5, 7)
_TILED_MODULE = re.compile(r"carafe_tiled_(float32|float64|float16|bfloat16)_k(\d+)")
_SCALAR_TYPES = {
    "float32": "float",
    "float64": "double",
    "float16": "half_bits",
    "bfloat16": "bfloat16_bits",
}
_ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}
_ACCUMULATOR_SIZE = {"float32": 4, "float64": 8, "float16": 4, "bfloat16": 4}
TILE_THREADS = (32, 8)  # CARAFE_TILE_THREADS_X / _Y in carafe_tiled.cuh
CHANNEL_BATCH_MAX = 4  # CARAFE_CHANNEL_BATCH_MAX
SHARED_MEMORY_LIMIT = 48 * 1024  # dynamic shared memory without an opt-in
# grad_features blocks hold whole s x s sub-pixel groups within 256 threads.
MAX_TILED_BACKWARD_SCALE = 8


def pairs_instantiated(dtype: str, kernel_size: int) -> bool:
    """Two pixels per thread doubles the mask registers: built for K <= 5, not fp64."""
    return dtype != "float64" and kernel_size <= 5


def fused_instantiated(dtype: str, kernel_size: int) -> bool:
    """fp64 with K >= 5 would spill in the fused kernels: it takes the unfused path."""
    return dtype != "float64" or kernel_size == 3


def tiled_module_name(dtype: str, kernel_size: int) -> str:
    return f"carafe_tiled_{dtype}_k{kernel_size}"


def all_module_names() -> list[str]:
    """Every NVRTC module: the general kernels, then one per (dtype, K) of tiled ones."""
    return [KERNEL_MODULE] + [
        tiled_module_name(dtype, k) for dtype in SUPPORTED_DTYPES for k in TILED_KERNEL_SIZES
    ]


def module_kernel_names(module_name: str) -> list[str]:
    if module_name == KERNEL_MODULE:
        return all_kernel_names()
    match = _TILED_MODULE.fullmatch(module_name)
    if match is None:
        raise ValueError(f"unknown kernel module {module_name!r}")
    dtype, k = match.group(1), int(match.group(2))
    names = [
        f"carafe_forward_tiled_k{k}_p1_{dtype}",
        f"carafe_backward_masks_tiled_k{k}_p1_{dtype}",
        f"carafe_backward_features_tiled_k{k}_{dtype}",
    ]
    if fused_instantiated(dtype, k):
        names += [
            f"carafe_fused_forward_k{k}_{dtype}",
            f"carafe_fused_backward_logits_k{k}_{dtype}",
            f"carafe_fused_backward_features_k{k}_{dtype}",
        ]
    if pairs_instantiated(dtype, k):
        names += [
            f"carafe_forward_tiled_k{k}_p2_{dtype}",
            f"carafe_backward_masks_tiled_k{k}_p2_{dtype}",
        ]
    return names


def kernel_names(dtype: str) -> tuple[str, str, str]:
    """Forward, grad-features and grad-masks kernel names for a storage dtype."""
    return (
        f"carafe_forward_{dtype}",
        f"carafe_backward_features_{dtype}",
        f"carafe_backward_masks_{dtype}",
    )


def all_kernel_names() -> list[str]:
    return [name for dtype in SUPPORTED_DTYPES for name in kernel_names(dtype)]


# ---------------------------------------------------------------- launch plan


@dataclass(frozen=True)
class Geometry:
    """Sizes of one CARAFE problem (already validated)."""

    batch: int
    channels: int
    height: int
    width: int
    kernel_size: int
    group_size: int
    scale_factor: int

    @property
    def out_height(self) -> int:
        return self.height * self.scale_factor

    @property
    def out_width(self) -> int:
        return self.width * self.scale_factor

    @property
    def mask_channels(self) -> int:
        return self.group_size * self.kernel_size * self.kernel_size

    def as_args(self) -> tuple[np.int64, ...]:
        return tuple(
            np.int64(value)
            for value in (
                self.batch,
                self.channels,
                self.height,
                self.width,
                self.kernel_size,
                self.group_size,
                self.scale_factor,
            )
        )


@dataclass(frozen=True)
class TensorRef:
    """A 4-D array as the kernels see it: address, element strides, dtype."""

    pointer: int
    strides: tuple[int, int, int, int]
    dtype: str


def _tensor_args(ref: TensorRef) -> tuple[np.int64, ...]:
    return tuple(np.int64(stride) for stride in ref.strides)


def _grid_for(total: int) -> tuple[int, int, int]:
    blocks = min(MAX_BLOCKS, -(-total // THREADS_PER_BLOCK))
    return (blocks, 1, 1)


def _launch_elementwise(
    kernel_name: str,
    total: int,
    pointers: tuple[TensorRef, TensorRef, TensorRef],
    geometry: Geometry,
    device: int,
    stream: int,
) -> None:
    if total == 0:
        return
    args = tuple(np.uint64(ref.pointer) for ref in pointers) + geometry.as_args()
    for ref in pointers:
        args += _tensor_args(ref)
    launch(kernel_name, _grid_for(total), (THREADS_PER_BLOCK, 1, 1), args, 0, device, stream)


# ---------------------------------------------------------------- variants

VARIANTS = ("auto", "general", "tiled", "tiled_pair")
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


_NO_TENSOR = TensorRef(0, (0, 0, 0, 0), "float32")


@dataclass(frozen=True)
class _Plan:
    module: str
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int
    tiling: tuple[int, int]  # channels per block, channels per shared-memory batch


def _halo_extent(outputs: int, scale: int, kernel_size: int) -> int:
    return (outputs - 1 + scale - 1) // scale + kernel_size


def _pairs_fit(geometry: Geometry, dtype: str, refs: tuple[TensorRef, ...]) -> bool:
    """Two pixels per thread: even s, and 2-element aligned, x-contiguous tensors."""
    if not pairs_instantiated(dtype, geometry.kernel_size) or geometry.scale_factor % 2:
        return False
    alignment = 2 * _ITEMSIZE[dtype]
    return all(
        ref.strides[3] == 1
        and all(stride % 2 == 0 for stride in ref.strides[:3])
        and ref.pointer % alignment == 0
        for ref in refs
    )


def _channel_batch(bytes_per_channel: int, fixed_bytes: int = 0, per_batch_bytes: int = 0) -> int:
    for batch in range(CHANNEL_BATCH_MAX, 0, -1):
        if batch * (bytes_per_channel + per_batch_bytes) + fixed_bytes <= SHARED_MEMORY_LIMIT:
            return batch
    return 0


def _channels_per_block(geometry: Geometry, blocks_per_slice: int) -> int:
    """Split a group's channels over blocks only when the grid would be small;
    every split re-reads the tile's masks once more."""
    per_group = geometry.channels // geometry.group_size
    per_block = per_group
    while per_block > 8 and blocks_per_slice * -(-per_group // per_block) < 1024:
        per_block = -(-per_block // 2)
    return per_block


def _output_tile_plan(geometry: Geometry, dtype: str, name: str, pair: bool, slice_channels: bool):
    """Plan for a kernel whose block owns an output tile (forward, grad_masks)."""
    k, s = geometry.kernel_size, geometry.scale_factor
    pairs = 2 if pair else 1
    tile_w, tile_h = TILE_THREADS[0] * pairs, TILE_THREADS[1]
    pitch = (tile_w - 1 + pairs - 1) // pairs + k
    halo_bytes = _halo_extent(tile_h, s, k) * pitch * _ACCUMULATOR_SIZE[dtype]
    batch = _channel_batch(halo_bytes)
    if batch == 0:
        return None
    tiles = -(-geometry.out_width // tile_w) * -(-geometry.out_height // tile_h)
    blocks = tiles * geometry.batch * geometry.group_size
    per_group = geometry.channels // geometry.group_size
    per_block = _channels_per_block(geometry, blocks) if slice_channels else per_group
    per_block = max(1, per_block)
    slices = max(1, -(-per_group // per_block))
    if blocks * slices > MAX_GRID_X:
        return None  # the general kernels loop over any size
    return _Plan(
        tiled_module_name(dtype, k),
        f"{name}_k{k}_p{pairs}_{dtype}",
        (blocks * slices, 1, 1),
        (TILE_THREADS[0], TILE_THREADS[1], 1),
        batch * halo_bytes,
        (per_block, batch),
    )


def _input_tile_plan(geometry: Geometry, dtype: str, name: str, from_logits: bool):
    """Plan for grad_features: a tile of input pixels, s x s threads each."""
    k, s = geometry.kernel_size, geometry.scale_factor
    if s > MAX_TILED_BACKWARD_SCALE:
        return None
    tile_cols, tile_rows = max(1, TILE_THREADS[0] // s), max(1, TILE_THREADS[1] // s)
    threads = tile_cols * s * tile_rows * s
    accumulator = _ACCUMULATOR_SIZE[dtype]
    plane = (tile_rows + k - 1) * s * (tile_cols + k - 1) * s
    batch = _channel_batch(plane * accumulator, per_batch_bytes=threads * accumulator)
    if batch == 0 or (from_logits and 2 * plane * accumulator > SHARED_MEMORY_LIMIT):
        return None
    shared = batch * (plane + threads) * accumulator
    if from_logits:
        shared = max(shared, 2 * plane * accumulator)
    blocks = -(-geometry.width // tile_cols) * -(-geometry.height // tile_rows)
    blocks *= geometry.batch * geometry.group_size
    per_block = max(1, _channels_per_block(geometry, blocks))
    slices = max(1, -(-(geometry.channels // geometry.group_size) // per_block))
    if blocks * slices > MAX_GRID_X:
        return None  # the general kernels loop over any size
    return _Plan(
        tiled_module_name(dtype, k),
        f"{name}_k{k}_{dtype}",
        (blocks * slices, 1, 1),
        (tile_cols * s, tile_rows * s, 1),
        shared,
        (per_block, batch),
    )


def _choose(plans: dict[str, Any], what: str) -> _Plan | None:
    """The requested variant's plan; None means the general kernels."""
    variant = requested_variant()
    if variant == "general":
        return None
    if variant == "auto":
        return plans.get("tiled_pair") or plans.get("tiled")
    plan = plans.get(variant)
    if plan is None:
        raise ValueError(f"carafe: the {variant!r} kernel variant cannot run {what}")
    return plan


def _tiled_applies(geometry: Geometry) -> bool:
    return geometry.kernel_size in TILED_KERNEL_SIZES


def _launch_plan(
    plan: _Plan,
    refs: tuple[TensorRef, TensorRef, TensorRef, TensorRef],
    geometry: Geometry,
    device: int,
    stream: int,
) -> None:
    args = tuple(np.uint64(ref.pointer) for ref in refs) + geometry.as_args()
    for ref in refs:
        args += _tensor_args(ref)
    args += tuple(np.int64(value) for value in plan.tiling)
    launch(plan.kernel, plan.grid, plan.block, args, plan.shared_mem, device, stream, plan.module)


def forward_plan(geometry: Geometry, refs: tuple[TensorRef, ...]) -> _Plan | None:
    """The tiled forward launch for these tensors, or None for the general kernel."""
    dtype = refs[0].dtype
    plans = {}
    if _tiled_applies(geometry):
        plans["tiled"] = _output_tile_plan(geometry, dtype, "carafe_forward_tiled", False, True)
        if _pairs_fit(geometry, dtype, refs[1:]):
            plans["tiled_pair"] = _output_tile_plan(
                geometry, dtype, "carafe_forward_tiled", True, True
            )
    return _choose({key: plan for key, plan in plans.items() if plan}, "this forward")


def launch_forward(
    geometry: Geometry,
    features: TensorRef,
    masks: TensorRef,
    output: TensorRef,
    device: int = 0,
    stream: int = 0,
) -> None:
    """output = carafe(features, masks); all three share one dtype."""
    total = geometry.batch * geometry.channels * geometry.out_height * geometry.out_width
    if total == 0:
        return
    plan = forward_plan(geometry, (features, masks, output))
    forward, _, _ = kernel_names(features.dtype)
    refs = (features, masks, output)
    _launch_plan_or_general(plan, forward, total, refs, geometry, device, stream)


def _launch_plan_or_general(
    plan: _Plan | None,
    general_kernel: str,
    total: int,
    refs: tuple[TensorRef, TensorRef, TensorRef],
    geometry: Geometry,
    device: int,
    stream: int,
) -> None:
    """The planned tiled launch, or the general one-thread-per-element kernel."""
    if plan is None:
        _launch_elementwise(general_kernel, total, refs, geometry, device, stream)
    else:
        first, second, out = refs
        _launch_plan(plan, (first, second, _NO_TENSOR, out), geometry, device, stream)


def launch_backward(
    geometry: Geometry,
    grad_output: TensorRef,
    features: TensorRef,
    masks: TensorRef,
    grad_features: TensorRef | None,
    grad_masks: TensorRef | None,
    device: int = 0,
    stream: int = 0,
) -> None:
    """Write whichever of grad_features / grad_masks is given."""
    if geometry.batch * geometry.channels == 0:
        _, backward_features, backward_masks = kernel_names(grad_output.dtype)
        if grad_masks is not None:  # zero channels: grad_masks is all zeros
            total = geometry.batch * geometry.mask_channels * geometry.out_height
            _launch_elementwise(
                backward_masks,
                total * geometry.out_width,
                (grad_output, features, grad_masks),
                geometry,
                device,
                stream,
            )
        return
    dtype = grad_output.dtype
    _, backward_features, backward_masks = kernel_names(dtype)
    if grad_features is not None:
        plans = {}
        if _tiled_applies(geometry):
            # one layout only: the pair variant's grad_features is the tiled one
            plans["tiled"] = plans["tiled_pair"] = _input_tile_plan(
                geometry, dtype, "carafe_backward_features_tiled", False
            )
        plan = _choose({key: plan for key, plan in plans.items() if plan}, "this grad_features")
        total = geometry.batch * geometry.channels * geometry.height * geometry.width
        refs = (grad_output, masks, grad_features)
        _launch_plan_or_general(plan, backward_features, total, refs, geometry, device, stream)
    if grad_masks is not None:
        plans = {}
        if _tiled_applies(geometry):
            name = "carafe_backward_masks_tiled"
            plans["tiled"] = _output_tile_plan(geometry, dtype, name, False, False)
            if _pairs_fit(geometry, dtype, (grad_output, grad_masks)):
                plans["tiled_pair"] = _output_tile_plan(geometry, dtype, name, True, False)
        plan = _choose({key: plan for key, plan in plans.items() if plan}, "this grad_masks")
        total = geometry.batch * geometry.mask_channels * geometry.out_height * geometry.out_width
        refs = (grad_output, features, grad_masks)
        _launch_plan_or_general(plan, backward_masks, total, refs, geometry, device, stream)


# ---------------------------------------------------------------- fused normaliser


def fused_supported(geometry: Geometry, dtype: str) -> bool:
    """Whether the fused logits kernels cover this geometry (else compose unfused)."""
    return (
        _tiled_applies(geometry)
        and fused_instantiated(dtype, geometry.kernel_size)
        and _output_tile_plan(geometry, "float64", "carafe_fused_forward", False, True) is not None
        and _input_tile_plan(geometry, "float64", "carafe_fused_backward_features", True)
        is not None
    )


def _fused_forward_plan(geometry: Geometry, dtype: str) -> _Plan:
    plan = _output_tile_plan(geometry, dtype, "carafe_fused_forward", False, True)
    assert plan is not None  # fused_supported() was checked by the caller
    return dataclasses.replace(plan, kernel=f"carafe_fused_forward_k{geometry.kernel_size}_{dtype}")


def launch_fused_forward(
    geometry: Geometry,
    features: TensorRef,
    logits: TensorRef,
    output: TensorRef,
    device: int = 0,
    stream: int = 0,
) -> None:
    """output = carafe(features, softmax(pixel_shuffle(logits))), masks never stored."""
    if geometry.batch * geometry.channels == 0:
        return
    plan = _fused_forward_plan(geometry, features.dtype)
    _launch_plan(plan, (features, logits, _NO_TENSOR, output), geometry, device, stream)


def launch_fused_backward(
    geometry: Geometry,
    grad_output: TensorRef,
    features: TensorRef,
    logits: TensorRef,
    grad_features: TensorRef,
    grad_logits: TensorRef,
    device: int = 0,
    stream: int = 0,
) -> None:
    """Gradients of the fused forward with respect to features and raw logits."""
    if geometry.batch == 0:
        return
    dtype = grad_output.dtype
    k = geometry.kernel_size
    if geometry.channels:
        plan = _input_tile_plan(geometry, dtype, "carafe_fused_backward_features", True)
        assert plan is not None
        refs = (grad_output, logits, _NO_TENSOR, grad_features)
        _launch_plan(plan, refs, geometry, device, stream)
    plan = _output_tile_plan(geometry, dtype, "carafe_fused_backward_logits", False, False)
    assert plan is not None
    plan = dataclasses.replace(plan, kernel=f"carafe_fused_backward_logits_k{k}_{dtype}")
    _launch_plan(plan, (grad_output, features, logits, grad_logits), geometry, device, stream)


# ---------------------------------------------------------------- runtimes


def simulator_enabled() -> bool:
    return os.environ.get("CARAFE_CUPY_SIMULATOR", "") not in ("", "0")


def launch(
    kernel_name: str,
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    args: tuple,
    shared_mem: int,
    device: int,
    stream: int,
    module_name: str = KERNEL_MODULE,
) -> None:
    """The one place a kernel starts: on the GPU, or on the CPU simulator.

    Everything before this (kernel choice, grid, arguments, outputs) is the
    same for both, so the simulator exercises the real launch code.
    """
    source = kernel_source(module_name)
    if simulator_enabled():
        from ._sim.runtime import get_runtime as simulator_runtime

        simulator_runtime().launch(module_name, source, kernel_name, grid, block, args, shared_mem)
    else:
        _cupy_runtime().launch(
            module_name, source, kernel_name, grid, block, args, shared_mem, device, stream
        )


@functools.cache
def _import_cupy() -> Any:
    if "cupy" not in sys.modules:
        _ensure_cupy_cache_dir()
    try:
        import cupy
    except Exception as error:  # ImportError, or a broken CUDA install
        raise KernelsUnavailableError(f"CuPy could not be imported: {error}") from error
    return cupy


def cupy_cache_dir() -> str:
    """The directory CuPy's disk cache uses (the same rule as CuPy's own)."""
    return os.environ.get("CUPY_CACHE_DIR", os.path.expanduser("~/.cupy/kernel_cache"))


def _ensure_cupy_cache_dir() -> None:
    """Make sure ``import cupy`` can create its kernel cache directory.

    CuPy creates ``CUPY_CACHE_DIR`` while it is imported, and the import fails
    if it cannot (a path under a file, a read-only mount). An unusable cache
    must not cost the GPU kernels, so CuPy gets a private temporary directory
    instead, with a warning.
    """
    directory = cupy_cache_dir()
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        fallback = tempfile.mkdtemp(prefix="carafe_cupy_kernel_cache_")
        warnings.warn(
            f"carafe_cupy: CuPy's kernel cache directory {directory!r} cannot be created "
            f"({error}); compiled kernels go to {fallback!r} for this process. Set "
            "CUPY_CACHE_DIR to a writable directory to keep them between runs.",
            RuntimeWarning,
            stacklevel=3,
        )
        os.environ["CUPY_CACHE_DIR"] = fallback


def cupy_importable() -> bool:
    try:
        _import_cupy()
    except KernelsUnavailableError:
        return False
    return True


def gpu_kernels_available(device: int | None = None) -> bool:
    """True when CuPy imports, sees a GPU, NVRTC can be loaded and can compile
    for that GPU (``device``; by default for at least one visible GPU)."""
    return gpu_kernels_unavailable_reason(device) is None


def gpu_kernels_unavailable_reason(device: int | None = None) -> str | None:
    """Why :func:`gpu_kernels_available` is False, or None when it is True."""
    if not cupy_importable():
        return "CuPy could not be imported"
    cupy = _import_cupy()
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            return "CuPy sees no CUDA GPU"
        cupy.cuda.nvrtc.getVersion()
        devices = range(count) if device is None else (device,)
        reasons = [_gpu_checks.untargetable_reason(cupy, index) for index in devices]
    except Exception as error:
        return f"CUDA or NVRTC is not usable ({error})"
    return None if None in reasons else reasons[0]


class _StreamHandle:
    """A raw ``cudaStream_t`` in the CUDA stream protocol."""

    def __init__(self, pointer: int) -> None:
        self.pointer = pointer

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.pointer)


class CupyRuntime:
    """NVRTC through ``cupy.RawModule``: compiled once per (device, module).

    CuPy keeps the binary in its disk cache (``CUPY_CACHE_DIR``); the lock
    makes concurrent first calls compile once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kernels: dict[tuple[int, str, str], Any] = {}
        self._disk_cache_warned = False
        self.compile_count = 0

    def kernel(self, module_name: str, source: str, kernel_name: str, device: int) -> Any:
        key = (device, module_name, kernel_name)
        kernel = self._kernels.get(key)
        if kernel is not None:
            return kernel
        cupy = _import_cupy()
        with self._lock:
            kernel = self._kernels.get(key)
            if kernel is None:
                kernel = self._compile(cupy, module_name, source, kernel_name, device)
                self.compile_count += 1
                self._kernels[key] = kernel
        return kernel

    def _compile(
        self, cupy: Any, module_name: str, source: str, kernel_name: str, device: int
    ) -> Any:
        try:
            try:
                return _load_kernel(cupy, source, kernel_name, device)
            except OSError as error:
                # CuPy could not read or write its disk cache (CUPY_CACHE_DIR);
                # compiling in memory still gives a working kernel.
                self._warn_disk_cache_unusable(error)
                with _cupy_cache_in_memory():
                    return _load_kernel(cupy, source, kernel_name, device)
        except cupy.cuda.compiler.CompileException as error:
            raise KernelCompileError(
                f"NVRTC failed to compile kernel {kernel_name!r} from {module_name}.cu:\n{error}"
            ) from error

    def _warn_disk_cache_unusable(self, error: OSError) -> None:
        if self._disk_cache_warned:
            return
        self._disk_cache_warned = True
        warnings.warn(
            f"carafe_cupy: CuPy's kernel cache in {cupy_cache_dir()!r} is unusable ({error}); "
            "kernels are compiled in memory, and again in every process. Point "
            "CUPY_CACHE_DIR at a writable directory to keep them.",
            RuntimeWarning,
            stacklevel=5,
        )

    def launch(
        self,
        module_name: str,
        source: str,
        kernel_name: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: tuple,
        shared_mem: int = 0,
        device: int = 0,
        stream: int = 0,
    ) -> None:
        cupy = _import_cupy()
        if (device, module_name, kernel_name) not in self._kernels:
            _gpu_checks.check_before_first_compile(cupy, device, stream, kernel_name)
        kernel = self.kernel(module_name, source, kernel_name, device)
        with cupy.cuda.Device(device), _cupy_stream(stream, device):
            kernel(grid, block, args, shared_mem=shared_mem)


def _load_kernel(cupy: Any, source: str, kernel_name: str, device: int) -> Any:
    """Compile (or take from CuPy's cache) one kernel and load it onto ``device``."""
    with cupy.cuda.Device(device):
        module = cupy.RawModule(code=source, options=NVRTC_OPTIONS)
        kernel = module.get_function(kernel_name)
        kernel.attributes  # noqa: B018 - forces the load onto this device
    return kernel


@contextlib.contextmanager
def _cupy_cache_in_memory():
    """Have CuPy compile without its disk cache (``CUPY_CACHE_IN_MEMORY=1``).

    CuPy reads the variable at each compile. It is process-wide, so a CuPy
    compile in another thread meanwhile also skips the disk cache, which costs
    that compile nothing but its caching.
    """
    previous = os.environ.get("CUPY_CACHE_IN_MEMORY")
    os.environ["CUPY_CACHE_IN_MEMORY"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["CUPY_CACHE_IN_MEMORY"]
        else:
            os.environ["CUPY_CACHE_IN_MEMORY"] = previous


@functools.lru_cache(maxsize=64)
def _cupy_stream(pointer: int, device: int) -> Any:
    cupy = _import_cupy()
    if hasattr(cupy.cuda.Stream, "from_external"):
        return cupy.cuda.Stream.from_external(_StreamHandle(pointer))
    return cupy.cuda.ExternalStream(pointer, device)


@functools.lru_cache(maxsize=1)
def _cupy_runtime() -> CupyRuntime:
    return CupyRuntime()


# ---------------------------------------------------------------- arrays


def cupy_module() -> Any:
    """CuPy itself, for the array front end (raises KernelsUnavailableError)."""
    return _import_cupy()


def is_cupy_array(value: Any) -> bool:
    """True for a cupy.ndarray; never imports CuPy just to answer."""
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(value, cupy.ndarray)


def is_simulated_array(value: Any) -> bool:
    """numpy arrays stand in for device arrays when the simulator is on."""
    return simulator_enabled() and isinstance(value, np.ndarray)


def array_module(array: Any) -> Any:
    return np if isinstance(array, np.ndarray) else _import_cupy()


def array_device(array: Any) -> int:
    return 0 if isinstance(array, np.ndarray) else array.device.id


def array_dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def array_ref(array: Any) -> TensorRef:
    itemsize = array.dtype.itemsize
    strides = tuple(stride // itemsize for stride in array.strides)
    pointer = array.ctypes.data if isinstance(array, np.ndarray) else array.data.ptr
    return TensorRef(pointer, strides, array_dtype_name(array.dtype))


def array_empty(like: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """An uninitialised array from the same module, on the same device, as ``like``."""
    if isinstance(like, np.ndarray):
        return np.empty(shape, dtype=dtype)
    cupy = _import_cupy()
    with cupy.cuda.Device(like.device.id):
        return cupy.empty(shape, dtype=dtype)


def array_stream(array: Any) -> int:
    """CuPy's current stream on the array's device (0 under the simulator)."""
    if isinstance(array, np.ndarray):
        return 0
    cupy = _import_cupy()
    with cupy.cuda.Device(array.device.id):
        return cupy.cuda.get_current_stream().ptr


# ---------------------------------------------------------------- offline build


def compile_offline(arch: str, module_name: str = KERNEL_MODULE) -> str:
    """Compile a module for ``arch`` (e.g. "sm_80") without a GPU; return ptxas' report.

    Uses NVRTC's C API through ``cupy.cuda.nvrtc``, which needs no device
    (``RawModule`` does). Raises KernelCompileError with the log on failure.
    """
    nvrtc = _import_cupy().cuda.nvrtc
    program = nvrtc.createProgram(kernel_source(module_name), f"{module_name}.cu", [], [])
    options = [f"--gpu-architecture={arch}", "-Xptxas=-v", *NVRTC_OPTIONS]
    failure = None
    try:
        nvrtc.compileProgram(program, options)
    except nvrtc.NVRTCError as error:
        failure = error
    log = nvrtc.getProgramLog(program)
    nvrtc.destroyProgram(program)
    if failure is not None:
        message = f"NVRTC failed on {module_name}.cu for {arch}:\n{log}"
        raise KernelCompileError(message) from failure
    return log
