"""Kernel arguments packed into one buffer of 64-bit words.

Every kernel takes its pointers first, then sizes, strides and tiling, each one
64-bit (``cuda_src``: ``REASSEMBLY_GEOMETRY_PARAMS``, ``CARAFE_STRIDE_PARAMS``), so
its parameter block is an array of words in argument order. An
:class:`ArgumentLayout` holds that array for one plan, geometry and layout, with
the words after the pointers written once, and the array of each word's address
the driver reads as ``kernelParams``; a call only writes its pointers in. Each
thread packs into its own buffer, so concurrent calls never share one.

:class:`KernelArguments` is one call's arguments (the layout and the pointers): a
sequence of numpy scalars (``np.uint64`` pointers, ``np.int64`` the rest) for the
launch record and tests, :meth:`KernelArguments.kernel_params` for a driver launch,
and :meth:`KernelArguments.read_back` for the simulator, which reads the words
through the same ``kernelParams`` a driver gets. No CuPy here.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator

import numpy as np

WORD_BYTES = 8
_WORD_MASK = (1 << 64) - 1  # negative values as their two's complement words


class ArgumentLayout:
    """The packed arguments of one launch: ``pointer_count`` pointers, then ``fixed``."""

    __slots__ = ("pointer_count", "fixed", "_local", "_pointer_slots")

    def __init__(self, pointer_count: int, fixed: tuple[int, ...]) -> None:
        self.pointer_count = pointer_count
        self.fixed = tuple(int(value) for value in fixed)
        self._local = threading.local()
        self._pointer_slots = slice(0, pointer_count)

    def __len__(self) -> int:
        return self.pointer_count + len(self.fixed)

    def _new_buffers(self) -> tuple[ctypes.Array, ctypes.Array, int]:
        count = max(len(self), 1)
        words = (ctypes.c_uint64 * count)()
        for index, value in enumerate(self.fixed, self.pointer_count):
            words[index] = value & _WORD_MASK
        base = ctypes.addressof(words)
        addresses = (ctypes.c_void_p * count)(*(base + WORD_BYTES * i for i in range(count)))
        buffers = (words, addresses, ctypes.addressof(addresses))
        self._local.buffers = buffers
        return buffers

    def kernel_params(self, pointers: tuple[int, ...]) -> int:
        """The address of this thread's ``void*`` array of argument addresses, the
        pointers written into the words it points at; valid until the thread's next
        call with this layout."""
        try:
            words, _, address = self._local.buffers
        except AttributeError:
            words, _, address = self._new_buffers()
        words[self._pointer_slots] = pointers
        return address


class KernelArguments:
    """One launch's arguments: a layout and the call's pointers (0 for no tensor).
    A sequence of numpy scalars (not a ``Sequence`` subclass: an ABC makes every
    launch's creation and ``isinstance`` slower)."""

    __slots__ = ("layout", "pointers")

    def __init__(self, layout: ArgumentLayout, pointers: tuple[int, ...]) -> None:
        # no check here (a launch makes one of these): the launcher picks
        # exactly the layout's pointer_count pointers
        self.layout = layout
        self.pointers = pointers

    def kernel_params(self) -> int:
        """``kernelParams`` for a driver launch made right away on this thread."""
        return self.layout.kernel_params(self.pointers)

    def read_back(self) -> tuple[np.generic, ...]:
        """The arguments as a driver reads them (through :meth:`kernel_params`), as
        numpy scalars: what the simulator launches with, so it runs the packed buffer."""
        count = len(self)
        addresses = (ctypes.c_void_p * max(count, 1)).from_address(self.kernel_params())
        words = [ctypes.c_uint64.from_address(addresses[i]).value for i in range(count)]
        pointers = self.layout.pointer_count
        return tuple(np.uint64(word) for word in words[:pointers]) + tuple(
            np.uint64(word).view(np.int64) for word in words[pointers:]
        )

    def __len__(self) -> int:
        return len(self.layout)

    def __iter__(self) -> Iterator[np.generic]:
        for pointer in self.pointers:
            yield np.uint64(pointer)
        for value in self.layout.fixed:
            yield np.int64(value)

    def __getitem__(self, index):  # type: ignore[override]
        return tuple(self)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, KernelArguments):
            return self.pointers == other.pointers and self.layout.fixed == other.layout.fixed
        if isinstance(other, tuple):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"KernelArguments(pointers={self.pointers}, fixed={self.layout.fixed})"
