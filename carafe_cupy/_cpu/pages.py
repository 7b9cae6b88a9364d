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
