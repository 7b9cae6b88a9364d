"""Row bands of the pure-PyTorch path, shared out over worker threads.

torch splits each CPU op evenly over its intra-op threads and waits for the slowest.
When another process takes one of the cores, every one of the path's many small ops
waits for the thread that lost its core, so the whole call slows by far more than the
share of CPU it lost. Here each worker runs its ops on one thread and takes the next
band when it is done with one, so a worker on a busy core simply does fewer bands.
Bands are cut from the shape alone, never from the thread count, and every output
element is summed in the same order whichever worker computes it: results do not
depend on the number of threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

# A band is worth handing to another thread only above this many output elements.
MIN_BAND_ELEMENTS = 1 << 16
# Enough bands for the scheduling to even out, few enough to keep per-op overhead small.
TARGET_BANDS = 16

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _forget_pools() -> None:
    # a forked child has the pools but not their threads: start afresh there
    _pools.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def _single_threaded_worker() -> None:
    # torch's intra-op thread count is per thread (OpenMP), so this leaves the caller alone
    torch.set_num_threads(1)


def _pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = ThreadPoolExecutor(
                workers, thread_name_prefix="carafe_cupy_cpu", initializer=_single_threaded_worker
            )
            _pools[workers] = pool
        return pool


def row_bands(
    height: int, min_rows: int, elements_per_row: int, max_elements: int | None = None
) -> list[tuple[int, int]]:
    """[top, bottom) row ranges covering ``height``: about TARGET_BANDS of them, each with
    MIN_BAND_ELEMENTS or more and at most ``max_elements`` (if given), and every band but
    the last exactly as tall as the others and at least ``min_rows`` tall."""
    elements_per_row = max(1, elements_per_row)
    rows = max(-(-height // TARGET_BANDS), -(-MIN_BAND_ELEMENTS // elements_per_row))
    if max_elements is not None:
        rows = min(rows, max_elements // elements_per_row)
    rows = max(1, min_rows, rows)
    return [(top, min(height, top + rows)) for top in range(0, height, rows)]


def workers_for(device: torch.device, bands: Sequence[object]) -> int:
    """Threads to use: torch's own count on the CPU, none elsewhere or for one band."""
    if device.type != "cpu" or len(bands) < 2:
        return 1
    return min(torch.get_num_threads(), len(bands))


def run_bands(
    work: Callable[[tuple[int, int]], None], bands: Sequence[tuple[int, int]], workers: int
) -> None:
    """``work(band)`` for every band; with several workers, each takes the next free band."""
    if workers <= 1:
        for band in bands:
            work(band)
        return
    # grad and inference modes are thread-local: carry the caller's over
    grad_enabled = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()

    def in_callers_mode(band: tuple[int, int]) -> None:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad_enabled):
            work(band)

    for _ in _pool(workers).map(in_callers_mode, bands):  # re-raises a worker's exception
        pass


def alternating(bands: Sequence[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
    """Even bands, then odd ones: bands of one list never touch each other's halo."""
    yield list(bands[0::2])
    yield list(bands[1::2])
