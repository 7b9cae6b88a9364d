"""Which CPU path runs, and the torch side of the compiled CPU kernels.

``CARAFE_CUPY_CPU_KERNEL`` picks the path for torch CPU tensors: ``auto`` (the
default) runs the kernels compiled by Numba when numba imports and the
pure-PyTorch path otherwise; ``numba`` insists on the kernels (an error names
what is missing); ``torch`` always takes the pure-PyTorch path. Numba is imported
on the first CPU call, not with the package.

The kernels get flat views of the tensors' memory and their strides, so no
input is copied or converted; outputs are allocated by torch. Work items
(batch, group, band of rows) are shared out over ``torch.get_num_threads()``
threads the way the pure-PyTorch path shares its bands (``bands.run_bands``):
each thread takes the next item when done, so one on a busy core simply does
fewer. The kernels release the GIL. Items are cut from the shape alone.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import numpy as np
import torch

from . import jit_warmup, pages
from .bands import run_bands, workers_for
from .jit_choice import CHOICES, ENVIRONMENT_VARIABLE, requested  # noqa: F401  (re-exported)

INSTALL_HINT = "pip install 'carafe_cupy[cpu]' (or numba) for the compiled CPU kernels"
# Work items per call to aim for: enough for threads to even out on busy cores,
# few enough that the per-item call overhead (tens of microseconds) stays small.
TARGET_ITEMS = 16
# Rows of at most this many window centers go to jit_narrow (see _narrow_suits): at 56
# centers (RedNet-50's first involution) the column-blocked forward is as fast or faster.
NARROW_CENTERS = 32

_NUMPY_VIEWS = {
    torch.float64: (torch.float64, np.float64),
    torch.float32: (torch.float32, np.float32),
    torch.float16: (torch.int16, np.int16),  # the kernels convert fp16 from its bits
    torch.bfloat16: (torch.int16, np.uint16),  # and bf16 from its bits, told apart by sign
}

_load_lock = threading.Lock()
_state: dict[str, Any] = {"kernels": None, "error": None, "loaded": False}


def _kernels() -> Any:
    """The compiled-kernel module, or None (the reason kept in _state['error'])."""
    with _load_lock:
        if not _state["loaded"]:
            _state["loaded"] = True
            try:
                import numba

                if numba.config.DISABLE_JIT:  # the kernels would run as Python loops
                    _state["error"] = "Numba's compiler is switched off (NUMBA_DISABLE_JIT)"
                    return None
                # every kernel module here, so that one that fails to import falls back
                from . import jit_backward, jit_forward, jit_kernels, jit_narrow  # noqa: F401

                _state["kernels"] = jit_kernels
            except ImportError as error:
                _state["error"] = f"numba is not installed ({error})"
            except Exception as error:  # a numba that imports but does not work here
                _state["error"] = f"numba failed to load ({type(error).__name__}: {error})"
        return _state["kernels"]


def _disable(error: Exception) -> None:
    with _load_lock:
        _state["kernels"] = None
        _state["error"] = f"the compiled kernels failed ({type(error).__name__}: {error})"
    warnings.warn(
        f"carafe_cupy: {_state['error']}; using the pure-PyTorch CPU path from now on",
        RuntimeWarning,
        stacklevel=3,
    )


def use_jit(device: torch.device) -> bool:
    """Whether CPU tensors on ``device`` go to the compiled kernels."""
    if device.type != "cpu":
        return False
    choice = requested()
    if choice == "torch":
        return False
    if _kernels() is None:
        if choice == "numba":
            raise RuntimeError(
                f"carafe_cupy: {ENVIRONMENT_VARIABLE}=numba, but {_state['error']}; "
                f"{INSTALL_HINT}, or unset {ENVIRONMENT_VARIABLE}"
            )
        return False
    return True


def describe() -> str:
    """One line: which path torch CPU tensors take, and why."""
    try:
        choice = requested()
    except ValueError as error:
        return f"unusable setting: {error}"
    if choice == "torch":
        return f"pure PyTorch ({ENVIRONMENT_VARIABLE}=torch)"
    if _kernels() is None:
        if choice == "numba":
            return f"none: {ENVIRONMENT_VARIABLE}=numba, but {_state['error']}"
        return f"pure PyTorch ({_state['error']}; {INSTALL_HINT})"
    import numba

    from . import jit_cache

    where = jit_cache.user_cache_dir() or jit_cache.configured_dir()
    return (
        f"CPU kernels compiled by Numba {numba.__version__} "
        f"({ENVIRONMENT_VARIABLE}={choice}; cache {where})"
    )


def _flat(tensor: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A 1-D numpy view of the tensor's memory, and its element strides."""
    view_dtype, numpy_dtype = _NUMPY_VIEWS[tensor.dtype]
    tensor = tensor.detach().view(view_dtype)
    span = 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    flat = tensor.as_strided((span,), (1,)).numpy().view(numpy_dtype)
    return flat, np.array(tensor.stride(), dtype=np.int64)


def _dims(features: torch.Tensor, params: tuple[int, ...]) -> np.ndarray:
    """(N, C, H, W, k, G, s, t, d) for the kernels."""
    return np.array([*features.shape, *params], dtype=np.int64)


def _items(batch: int, groups: int, rows: int) -> list[tuple[int, int, int, int]]:
    """(n, g, top, bottom) work items: about TARGET_ITEMS, whatever the thread count."""
    bands = -(-TARGET_ITEMS // max(1, batch * groups))
    band = max(1, -(-rows // bands))
    return [
        (n, g, top, min(rows, top + band))
        for n in range(batch)
        for g in range(groups)
        for top in range(0, rows, band)
    ]


def _narrow_suits(channels_per_group: int, centers: int, scale: int) -> bool:
    """Whether ``jit_narrow`` (channels in the vector lanes) beats ``jit_forward``
    (output columns in them) on this shape: rows of few window centers, groups of
    at least half a vector of channels, no upsampling (measured on the
    involution, CARAFE++ and FPN shapes)."""
    return scale == 1 and centers <= NARROW_CENTERS and channels_per_group >= 8


def _group_items(
    batch: int, groups: int, rows: int, min_rows: int
) -> list[tuple[int, int, int, int, int]]:
    """(n, first group, last group + 1, top, bottom) work items for ``jit_narrow``:
    about TARGET_ITEMS, whatever the thread count; runs of groups where there are
    many, else bands of at least ``min_rows`` rows (each band arranges its rows anew)."""
    per_item = max(1, batch * groups // TARGET_ITEMS)
    if per_item > 1 or batch * groups >= TARGET_ITEMS:
        return [
            (n, g, min(groups, g + per_item), 0, rows)
            for n in range(batch)
            for g in range(0, groups, per_item)
        ]
    bands = -(-TARGET_ITEMS // (batch * groups))
    band = max(1, min_rows, -(-rows // bands))
    return [
        (n, g, g + 1, top, min(rows, top + band))
        for n in range(batch)
        for g in range(groups)
        for top in range(0, rows, band)
    ]


def _run(kernel: Any, args: tuple[Any, ...], items: list[tuple[int, ...]]) -> None:
    """kernel(*args, *item) for every item, over torch's CPU threads."""

    def work(band: tuple[int, int]) -> None:
        for index in range(*band):
            kernel(*args, *items[index])

    bands = [(index, index + 1) for index in range(len(items))]
    run_bands(work, bands, workers_for(torch.device("cpu"), bands))


def _guarded(call: Any) -> Any:
    """Run ``call``; if Numba cannot compile the kernels here, fall back (auto only)."""
    from numba.core.errors import NumbaError

    try:
        return call()
    except NumbaError as error:
        if requested() == "numba":
            raise
        _disable(error)
        return None


def forward(
    features: torch.Tensor,
    masks: torch.Tensor,
    params: tuple[int, int, int, int, int],
    memory_format: torch.memory_format,
) -> torch.Tensor | None:
    """CARAFE forward; params (k, G, s, t, d). None if the kernels failed to compile."""
    from . import jit_forward, jit_narrow  # Numba imports: use_jit has loaded the kernels
    batch, channels, height, width = features.shape
    scale, stride = params[2], params[3]
    rows, cols = -(-height // stride), -(-width // stride)
    out = torch.empty(
        (batch, channels, rows * scale, cols * scale),
        dtype=features.dtype,
        memory_format=memory_format,
    )
    if out.numel() == 0:
        return out
    if features.numel() == 0 or masks.numel() == 0:
        return out.zero_()
    pages.advise_huge_pages(out)  # before the kernels' first write to it
    (f, fs), (m, ms), (o, os_) = _flat(features), _flat(masks), _flat(out)
    args = (f, m, o, fs, ms, os_, _dims(features, params))
    if _narrow_suits(channels // params[1], cols, scale):
        kernel, items = jit_narrow.forward, _group_items(batch, params[1], rows, params[0])
    else:
        kernel, items = jit_forward.forward, _items(batch, params[1], rows)
    touch = pages.first_touch_ranges(out, workers_for(torch.device("cpu"), items))
    if touch:  # the result's pages faulted in by all the threads, not the first item's
        run_bands(lambda byte_range: pages.first_touch(out, byte_range), touch, len(touch))
    done = _guarded(lambda: _run(kernel, args, items) or True)
    if done and (features.requires_grad or masks.requires_grad):  # a backward is likely
        jit_warmup.start(("backward", features.dtype), lambda: _tiny_calls(features.dtype, params))
    return out if done else None


def backward(
    grad_output: torch.Tensor,
    features: torch.Tensor,
    masks: torch.Tensor,
    params: tuple[int, int, int, int, int],
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(grad_features, grad_masks), each laid out like its input; None if the
    kernels failed to compile."""
    if _kernels() is None:
        return None
    from . import jit_backward as kernels  # its own module: compiled only when needed
    grad_features = torch.empty_like(features)
    grad_masks = torch.empty_like(masks)
    if grad_output.numel() == 0 or features.numel() == 0 or masks.numel() == 0:
        return grad_features.zero_(), grad_masks.zero_()
    height = features.shape[2]
    (g, gs), (f, fs), (m, ms) = _flat(grad_output), _flat(features), _flat(masks)
    (gf, gfs), (gm, gms) = _flat(grad_features), _flat(grad_masks)

    dims = _dims(features, params)
    batch, groups = features.shape[0], params[1]

    def run() -> bool:
        # split by input rows: each item gathers the outputs that read its rows, and
        # sums the mask gradients of the center rows it owns from the same grad_output
        _run(kernels.gradients, (g, f, m, gf, gm, gs, fs, ms, gfs, gms, dims),
             _items(batch, groups, height))
        return True

    return (grad_features, grad_masks) if _guarded(run) else None


def _tiny_calls(dtype: torch.dtype, params: tuple[int, int, int, int, int],
                forward_too: bool = False) -> None:
    """The backward (and the forward) once on a 1x1 input of this dtype and these
    parameters: whatever kernels they use get compiled, or loaded from the cache."""
    if not use_jit(torch.device("cpu")):
        return
    k, groups, scale = params[:3]
    features = torch.zeros((1, groups, 1, 1), dtype=dtype)
    masks = torch.zeros((1, groups * k * k, scale, scale), dtype=dtype)
    if forward_too:
        forward(features, masks, params, torch.contiguous_format)
    backward(torch.zeros((1, groups, scale, scale), dtype=dtype), features, masks, params)


def _start_at_import() -> None:
    """The fp32 kernels on a background thread, if CARAFE_CUPY_CPU_WARMUP asks."""
    try:
        wanted = jit_warmup.at_import_requested()
    except ValueError as error:  # an import must not fail on it; `info` reports it too
        warnings.warn(f"carafe_cupy: {error}; no warm-up", RuntimeWarning, stacklevel=2)
        return
    if wanted:
        jit_warmup.start(("import", torch.float32),
                         lambda: _tiny_calls(torch.float32, (3, 1, 2, 1, 1), forward_too=True))


_start_at_import()
