"""Large CPU results backed by 2 MiB pages where Linux offers them on request.

A freshly allocated result of tens of MiB is new memory: the first write to each
4 KiB page faults, and the kernel zero-fills the page, which can cost more than
computing the values. With transparent huge pages in ``madvise`` mode, asking for
them over the result's 2 MiB-aligned interior turns hundreds of faults per
2 MiB into one. It is only advice: memory use is unchanged (only whole 2 MiB
stretches inside the tensor are named), and anywhere it does not apply (another
system, THP off or always on, a failing call) nothing happens.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from pathlib import Path

import torch

HUGE_PAGE = 2 << 20
# Below this a tensor holds few whole huge pages; not worth a system call.
MIN_BYTES = 8 << 20
_MADV_HUGEPAGE = 14  # Linux
_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")

_lock = threading.Lock()
_madvise: list = []  # [the libc function, or None where advice does not apply]


def _load_madvise():
    with _lock:
        if not _madvise:
            function = None
            try:
                if sys.platform.startswith("linux") and "[madvise]" in _SETTING.read_text():
                    function = ctypes.CDLL(None, use_errno=True).madvise
                    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                    function.restype = ctypes.c_int
            except (OSError, AttributeError):
                function = None
            _madvise.append(function)
        return _madvise[0]


def first_touch_ranges(tensor: torch.Tensor, parts: int) -> list[tuple[int, int]]:
    """``parts`` byte ranges [start, end) of ``tensor``'s storage, split at huge-page
    boundaries, for threads to fault in side by side (``first_touch``); none where
    the storage is below MIN_BYTES or parts < 2.

    A result's pages are faulted in (and zero-filled by the OS) by whichever thread
    writes them first. The kernels' work items each write a band of rows in every
    channel, so every huge page is written by every item: the first item faults in
    the whole result on its own thread while the items on other threads wait for
    those pages."""
    size = tensor.untyped_storage().nbytes()
    if size < MIN_BYTES or parts < 2:
        return []
    base = tensor.untyped_storage().data_ptr()
    pages = -(-size // HUGE_PAGE)
    step = -(-pages // parts) * HUGE_PAGE
    first = -(-base // HUGE_PAGE) * HUGE_PAGE - base  # the first huge-page boundary inside
    cuts = [0, *range(first + step if first else step, size, step), size]
    return [(start, end) for start, end in zip(cuts, cuts[1:]) if start < end]


def first_touch(tensor: torch.Tensor, byte_range: tuple[int, int]) -> None:
    """Write a zero byte into every 4 KiB page of ``tensor``'s storage in ``byte_range``
    (its contents are about to be overwritten): the pages are faulted in here."""
    start, end = byte_range
    storage = torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage())
    storage[start:end:4096].zero_()


def advise_huge_pages(tensor: torch.Tensor) -> None:
    """Ask for huge pages over the whole 2 MiB pages inside ``tensor``'s memory;
    call it before the tensor is first written."""
    size = tensor.untyped_storage().nbytes()
    if size < MIN_BYTES:
        return
    madvise = _load_madvise()
    if madvise is None:
        return
    start = tensor.untyped_storage().data_ptr()
    first = -(-start // HUGE_PAGE) * HUGE_PAGE
    last = (start + size) // HUGE_PAGE * HUGE_PAGE
    if last > first:
        madvise(first, last - first, _MADV_HUGEPAGE)  # advice only: a failure changes nothing
