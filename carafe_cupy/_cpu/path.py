"""The pure-PyTorch reassembly (CARAFE and its strided, dilated form): any
device, memory O(input + output).

Work happens in a channels-last view, where an output tile (N, Hc, s, Wc, s, G, Cg)
and the window centers (N, Hc, 1, Wc, 1, G, Cg) line up, so each of the k*k taps
is one broadcast multiply-add over contiguous channels, restricted to the centers
whose tap lies inside the input:

    out[n, h, a, w, b, g, :] += masks[n, g*k*k + tap, h*s + a, w*s + b]
                                * features[n, g*Cg:(g+1)*Cg, h*t + (i - r)*d, w*t + (j - r)*d]

The centers are every t-th input pixel (Hc = ceil(H / t)), so a tap's sources
are a strided slice of the input: stride t, starting (i - r)*d from the first.

Only taps that can land inside the input for some window center are visited, so
the time follows the taps that touch the image, not k*k (a huge kernel on a small
image, or a dilation past the image, costs no more than the taps that read it).

Inputs in fp16/bf16 are accumulated in fp32 (fp64 stays fp64).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import torch

from .._core import limits as _limits
from .._core.geometry import Geometry
from . import jit_dispatch
from .bands import alternating, row_bands, run_bands, workers_for

# Elements of the temporaries one backward worker holds at a time (a tile of window
# centers); tiles shrink to a single center where one center needs more.
BACKWARD_TILE_ELEMENTS = 1 << 22


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def output_memory_format(features: torch.Tensor) -> torch.memory_format:
    """channels_last in, channels_last out; everything else gets contiguous."""
    if features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


_device_types: dict[torch.device, str] = {}


def device_type(device: torch.device) -> str:
    """``device.type``, kept per device: reading the attribute builds a new string
    each time, which the checks and launches of every call would pay for."""
    kind = _device_types.get(device)
    if kind is None:
        kind = device.type
        if len(_device_types) >= 64:  # a process sees few devices
            _device_types.clear()
        _device_types[device] = kind
    return kind


def device_memory_bytes(device: torch.device) -> int | None:
    """All the memory of ``device``: the host's for the CPU, the GPU's own for CUDA;
    None where it is unknown or nothing is allocated (meta tensors)."""
    kind = device_type(device)
    if kind == "cpu":
        return _limits.host_memory_bytes()
    if kind == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return _cuda_memory_bytes(index)
    return None


@functools.cache
def _cuda_memory_bytes(index: int) -> int:
    return torch.cuda.get_device_properties(index).total_memory


def _workspace_bytes(geometry: Geometry, dtype: torch.dtype, backward: bool) -> int:
    """What this path allocates besides its results (see cpu_forward, cpu_backward)."""
    g = geometry
    acc = accumulation_dtype(dtype)
    item = acc.itemsize
    features = g.batch * g.channels * g.height * g.width
    output = g.batch * g.channels * g.out_height * g.out_width
    masks = g.batch * g.mask_channels * g.out_height * g.out_width
    converted = dtype != acc  # masks (and grad_output) are copied into the accumulation dtype
    if not backward:
        return item * (features + output + (masks if converted else 0))
    tiles = BACKWARD_TILE_ELEMENTS * max(1, torch.get_num_threads())
    return item * (2 * features + masks + ((masks + output) if converted else 0) + tiles)


def check_memory(
    geometry: Geometry,
    dtype: torch.dtype,
    device: torch.device,
    backward: bool,
    workspace: bool = False,
    where: str = "carafe",
    weights: str = "masks",
    casts: Sequence[tuple[str, torch.Tensor]] = (),
    extra: Sequence[tuple[str, int]] = (),
) -> None:
    """Refuse, before allocating, a call whose results (and, with ``workspace``, this
    path's temporaries) would need more than all the memory of ``device``.
    ``weights`` is what the caller calls its masks (the fused op's logits); ``casts``
    are (name, tensor) inputs about to be cast to ``dtype`` (a copy where it differs:
    of the whole size even for an expanded tensor); ``extra`` are (what, bytes) more."""
    if torch.compiler.is_compiling():
        # traced, not run: the ops check again when the compiled code runs them
        return
    name = str(dtype).replace("torch.", "")
    parts = [
        (f"{input_name} cast to {name}", tensor.numel() * dtype.itemsize)
        for input_name, tensor in casts
        if tensor.dtype != dtype
    ]
    parts += [*extra, *_limits.reassembly_parts(geometry, dtype.itemsize, backward, weights)]
    if workspace:
        parts.append(("the PyTorch path's workspace", _workspace_bytes(geometry, dtype, backward)))
    cause = _limits.reassembly_cause(geometry, name)
    _limits.check_fits(where, parts, device_memory_bytes(device), device_label(device), cause)


def device_label(device: torch.device) -> str:
    return "the host (cpu)" if device.type == "cpu" else str(device)


def _geometry(features: torch.Tensor, *params: int) -> Geometry:
    return Geometry(*features.shape, *params)


def _channels_last(features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, H, W, C), contiguous, in the accumulation dtype."""
    return features.to(dtype).permute(0, 2, 3, 1).contiguous()


def _tap_ranges(offset: int, size: int, stride: int = 1) -> tuple[int, int]:
    """Centers [start, stop) whose tap at ``offset`` lands inside [0, size):
    center c reads input c*stride + offset, for c < ceil(size / stride).

    Taps outside the input are skipped rather than read as zero padding, so a
    mask or gradient of Inf/NaN there does not turn into NaN (Inf * 0).
    """
    centers = -(-size // stride)
    return max(0, -(offset // stride)), min(centers, (size - 1 - offset) // stride + 1)


def _tap_span(kernel_size: int, dilation: int, size: int, stride: int = 1) -> tuple[int, int]:
    """Kernel rows (or columns) [first, last) whose taps can land inside [0, size) for
    some window center; the others never touch the input. The center tap always can.

    Centers read c*stride + (i - r)*d for c < ceil(size / stride), so the offsets
    that can land inside lie in [-(centers - 1)*stride, size - 1].
    """
    radius = (kernel_size - 1) // 2
    lowest = -(-(-size // stride) - 1) * stride
    first = max(-radius, -(-lowest // dilation))  # ceil(lowest / d)
    last = min(radius, (size - 1) // dilation)
    return radius + first, radius + last + 1


def _source_slice(start: int, stop: int, offset: int, stride: int) -> slice:
    """The input rows (or columns) that centers [start, stop) read at ``offset``."""
    return slice(start * stride + offset, (stop - 1) * stride + offset + 1, stride)


def _masks_by_tap(
    masks: torch.Tensor, group_size: int, kernel_size: int, scale_factor: int, dtype: torch.dtype
) -> torch.Tensor:
    """masks (N, G*k*k, H*s, W*s) viewed as (N, H, s, W, s, G, k*k)."""
    taps = kernel_size * kernel_size
    batch, _, out_height, out_width = masks.shape
    height, width = out_height // scale_factor, out_width // scale_factor
    by_tap = masks.to(dtype).reshape(
        batch, group_size, taps, height, scale_factor, width, scale_factor
    )
    return by_tap.permute(0, 3, 4, 5, 6, 1, 2)


def cpu_forward(
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
    stride: int = 1,
    dilation: int = 1,
) -> torch.Tensor:
    params = (kernel_size, group_size, scale_factor, stride, dilation)
    if jit_dispatch.use_jit(features.device):  # the compiled kernels, where numba is
        # they hold only the results (and scratch rows), so no workspace to count
        check_memory(_geometry(features, *params), features.dtype, features.device, False)
        out = jit_dispatch.forward(features, masks, params, output_memory_format(features))
        if out is not None:
            return out
    check_memory(_geometry(features, *params), features.dtype, features.device, False, True)
    batch, channels, height, width = features.shape
    s, k, t, d = scale_factor, kernel_size, stride, dilation
    radius = (k - 1) // 2
    rows, cols = -(-height // t), -(-width // t)  # window centers
    acc = accumulation_dtype(features.dtype)
    features_cl = _channels_last(features, acc)
    mask_taps = _masks_by_tap(masks, group_size, k, s, acc)

    channels_per_group = channels // group_size
    out = torch.zeros(
        (batch, rows, s, cols, s, group_size, channels_per_group),
        dtype=acc,
        device=features.device,
    )

    row_taps = range(*_tap_span(k, d, height, t))
    col_taps = range(*_tap_span(k, d, width, t))

    def forward_band(band: tuple[int, int]) -> None:
        top, bottom = band
        for i in row_taps:
            row_offset = (i - radius) * d
            h0, h1 = _tap_ranges(row_offset, height, t)
            h0, h1 = max(h0, top), min(h1, bottom)
            for j in col_taps:
                col_offset = (j - radius) * d
                w0, w1 = _tap_ranges(col_offset, width, t)
                if h0 >= h1 or w0 >= w1:
                    continue
                source_rows = _source_slice(h0, h1, row_offset, t)
                source_cols = _source_slice(w0, w1, col_offset, t)
                window = features_cl[:, source_rows, source_cols].reshape(
                    batch, h1 - h0, 1, w1 - w0, 1, group_size, channels_per_group
                )
                weights = mask_taps[:, h0:h1, :, w0:w1, :, :, i * k + j, None]
                out[:, h0:h1, :, w0:w1].addcmul_(window, weights)

    bands = row_bands(rows, 1, batch * s * s * cols * channels)
    run_bands(forward_band, bands, workers_for(features.device, bands))

    out = out.view(batch, rows * s, cols * s, channels).permute(0, 3, 1, 2)
    return out.to(dtype=features.dtype, memory_format=output_memory_format(features))


def cpu_backward(
    grad_output: torch.Tensor,
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
    stride: int = 1,
    dilation: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_features, grad_masks), each shaped, typed and laid out like its input.

    Per window center and group, with W the (Cg, T) window of features it reads at
    the T taps that can touch the input, M the (s*s, T) masks of its s*s outputs and
    G their (s*s, Cg) grad_output: grad_masks = G @ W and grad_window = M^T @ G. Done
    as batched matmuls over a tile of centers at a time, with each tap's window
    gathered from (and its gradient added into) the unpadded input, so memory stays
    the inputs' and outputs' own plus a fixed budget, whatever the dilation.
    """
    params = (kernel_size, group_size, scale_factor, stride, dilation)
    if jit_dispatch.use_jit(features.device):  # the compiled kernels, where numba is
        check_memory(_geometry(features, *params), features.dtype, features.device, True)
        grads = jit_dispatch.backward(grad_output, features, masks, params)
        if grads is not None:
            return grads
    check_memory(_geometry(features, *params), features.dtype, features.device, True, True)
    batch, channels, height, width = features.shape
    s, k, t, d = scale_factor, kernel_size, stride, dilation
    radius = (k - 1) // 2
    rows, cols = -(-height // t), -(-width // t)  # window centers
    acc = accumulation_dtype(features.dtype)
    channels_per_group = channels // group_size
    first_row, last_row = _tap_span(k, d, height, t)
    first_col, last_col = _tap_span(k, d, width, t)
    span_rows, span_cols = last_row - first_row, last_col - first_col
    touching = span_rows * span_cols  # taps that can read the input

    features_cl = _channels_last(features, acc)
    grad_features_cl = torch.zeros_like(features_cl)
    # (N, Hc, Wc, G, s, s, span_rows, span_cols): grouped by window center
    masks_by_pixel = masks.to(acc).reshape(batch, group_size, k, k, rows, s, cols, s)
    masks_by_pixel = masks_by_pixel[:, :, first_row:last_row, first_col:last_col]
    masks_by_pixel = masks_by_pixel.permute(0, 4, 6, 1, 5, 7, 2, 3)
    # (N, Hc, Wc, G, s, s, Cg)
    grad_by_pixel = grad_output.to(acc).reshape(
        batch, group_size, channels_per_group, rows, s, cols, s
    )
    grad_by_pixel = grad_by_pixel.permute(0, 3, 5, 1, 4, 6, 2)
    # Taps that never touch the input get an exactly zero gradient.
    allocate = torch.empty if touching == k * k else torch.zeros
    grad_masks = allocate(
        (batch, group_size, k, k, rows, s, cols, s), dtype=acc, device=features.device
    )
    grad_masks_by_pixel = grad_masks[:, :, first_row:last_row, first_col:last_col]
    grad_masks_by_pixel = grad_masks_by_pixel.permute(0, 4, 6, 1, 5, 7, 2, 3)

    def taps_in(top: int, bottom: int, left: int, right: int) -> Iterator[tuple[int, ...]]:
        """Every tap with the centers of the tile it reads inside the input: (tap row,
        tap column, center rows [h0, h1), center columns [w0, w1), source rows, columns)."""
        for i in range(first_row, last_row):
            row_offset = (i - radius) * d
            h0, h1 = _tap_ranges(row_offset, height, t)
            h0, h1 = max(h0, top), min(h1, bottom)
            if h0 >= h1:
                continue
            for j in range(first_col, last_col):
                col_offset = (j - radius) * d
                w0, w1 = _tap_ranges(col_offset, width, t)
                w0, w1 = max(w0, left), min(w1, right)
                if w0 < w1:
                    source = (
                        _source_slice(h0, h1, row_offset, t),
                        _source_slice(w0, w1, col_offset, t),
                    )
                    yield i - first_row, j - first_col, h0, h1, w0, w1, *source

    def backward_tile(top: int, bottom: int, left: int, right: int) -> None:
        tile_rows, tile_cols = bottom - top, right - left
        shape = (batch, tile_rows, tile_cols, group_size)
        window = features_cl.new_zeros(*shape, channels_per_group, span_rows, span_cols)
        # Taps outside the input read nothing; their mask gradient is exactly zero
        # (not grad_output * 0, which is NaN where grad_output is infinite).
        outside = torch.ones(
            (tile_rows, tile_cols, span_rows, span_cols), dtype=torch.bool, device=features.device
        )
        taps = list(taps_in(top, bottom, left, right))
        for i, j, h0, h1, w0, w1, source_rows, source_cols in taps:
            centers = (slice(h0 - top, h1 - top), slice(w0 - left, w1 - left))
            window[:, centers[0], centers[1], :, :, i, j] = features_cl[
                :, source_rows, source_cols
            ].view(batch, h1 - h0, w1 - w0, group_size, channels_per_group)
            outside[centers[0], centers[1], i, j] = False
        window = window.view(*shape, channels_per_group, touching)
        weights = masks_by_pixel[:, top:bottom, left:right].reshape(*shape, s * s, touching)
        # bmm runs one small matmul at a time on odd strides (e.g. the stride-0
        # grad_output of out.sum()): hand it dense operands
        upstream = grad_by_pixel[:, top:bottom, left:right]
        upstream = upstream.reshape(*shape, s * s, channels_per_group).contiguous()

        tile_grad_masks = torch.matmul(upstream, window).view(*shape, s, s, span_rows, span_cols)
        tile_outside = outside.view(1, tile_rows, tile_cols, 1, 1, 1, span_rows, span_cols)
        tile_grad_masks = tile_grad_masks.masked_fill(tile_outside, 0)
        grad_masks_by_pixel[:, top:bottom, left:right] = tile_grad_masks

        grad_windows = torch.matmul(weights.transpose(-1, -2), upstream)  # (..., T, Cg)
        grad_windows = grad_windows.view(*shape, span_rows, span_cols, channels_per_group)
        for i, j, h0, h1, w0, w1, source_rows, source_cols in taps:
            tap_grad = grad_windows[:, h0 - top : h1 - top, w0 - left : w1 - left, :, i, j]
            grad_features_cl[:, source_rows, source_cols] += tap_grad.reshape(
                batch, h1 - h0, w1 - w0, channels
            )

    # What one window center costs: its window and window gradient, masks and mask
    # gradient, grad_output; tiles of centers stay within BACKWARD_TILE_ELEMENTS.
    per_center = max(
        1, batch * (touching * (2 * channels + 2 * group_size * s * s) + s * s * channels)
    )
    tile_cols = max(1, min(cols, BACKWARD_TILE_ELEMENTS // per_center))
    tile_rows = max(1, BACKWARD_TILE_ELEMENTS // (per_center * tile_cols))

    def backward_band(band: tuple[int, int]) -> None:
        # a band's tiles run one after another on one worker: they may share input rows
        for top in range(band[0], band[1], tile_rows):
            for left in range(0, cols, tile_cols):
                backward_tile(top, min(band[1], top + tile_rows), left, min(cols, left + tile_cols))

    # A band's window gradients reach from (first_row - r)*d to (last_row - 1 - r)*d
    # input rows around its centers, t apart: bands at least that many centers tall,
    # run evens then odds, never write the same rows at the same time, in a fixed order.
    reach = (last_row - first_row - 1) * d
    bands = row_bands(rows, -(-reach // t), cols * per_center, max_elements=BACKWARD_TILE_ELEMENTS)
    workers = workers_for(features.device, bands)
    for phase in alternating(bands):  # the same summation order with any worker count
        run_bands(backward_band, phase, min(workers, len(phase)))

    return (
        _like(grad_features_cl.permute(0, 3, 1, 2), features),
        _like(grad_masks.view(masks.shape), masks),
    )


def _like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``value`` with the reference's dtype and (dense) strides: itself where it has
    them already (a fresh tensor of this path's), else a copy."""
    result = torch.empty_like(reference, device="meta")
    if value.dtype == result.dtype and value.stride() == result.stride():
        return value
    result = torch.empty_like(reference)
    result.copy_(value)
    return result
