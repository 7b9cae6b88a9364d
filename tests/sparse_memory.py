"""Tensors with elements tens of gigabytes apart, in little memory.

Each tensor is a strided view into its own sparse memory mapping (anonymous and
unreserved, or a sparse file where the system refuses that): only the pages the
kernels touch take memory. The view starts ``START`` elements into its mapping,
so an offset a kernel wrapped to 32 bits (at most 2**31 either side of the
view's first element) lands on mapped zeros or other elements: a wrong
answer rather than a crash.
"""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import torch

START = 2**31
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform == "linux" else 0)


class SparseArena:
    """Makes strided tensors in sparse mappings; :meth:`close` unmaps them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.maps: list[mmap.mmap] = []

    def tensor(
        self, values: torch.Tensor | None, shape, strides, dtype: torch.dtype
    ) -> torch.Tensor:
        """A view of ``shape`` with element ``strides``, holding ``values`` (NaN if None)."""
        span = sum((size - 1) * stride for size, stride in zip(shape, strides)) + 1
        itemsize = torch.empty((), dtype=dtype).element_size()
        size = (START + max(span, START) + 4096) * itemsize
        self.maps.append(self._mapping(size))
        storage = torch.frombuffer(self.maps[-1], dtype=dtype)
        view = storage.as_strided(shape, strides, START)
        if values is None:
            view.fill_(float("nan"))
        else:
            view.copy_(values)
        return view

    def _mapping(self, size: int) -> mmap.mmap:
        try:  # no swap reserved: untouched pages never exist
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
            return mmap.mmap(-1, size, flags=flags)
        except OSError:  # strict overcommit: a sparse file instead
            path = self.directory / f"tensor{len(self.maps)}.bin"
            with open(path, "wb") as file:
                file.truncate(size)
            with open(path, "r+b") as file:
                return mmap.mmap(file.fileno(), size)

    def close(self) -> None:
        for mapping in self.maps:
            try:
                mapping.close()
            except BufferError:  # a tensor still points into it; the OS unmaps at exit
                pass
