"""Checks on a cached simulator module before it is mapped.

``dlopen`` maps a library's segments from the file: one that ends early (a
truncated file whose ``.sha256`` was written to match) is a bus error when the
missing pages are touched, not an error. So a module is loaded only when it is
this user's (``_core.private_dirs``), matches its recorded digest, and is an
ELF shared object whose headers and loadable segments all lie inside the file.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from .._core import private_dirs

_ELF64_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
_PT_LOAD = 1
_ET_DYN = 3


def elf_problem(image: bytes) -> str | None:
    """Why ``image`` is not a whole little-endian 64-bit ELF shared object, or None."""
    if len(image) < _ELF64_HEADER.size or image[:4] != b"\x7fELF":
        return "not an ELF file"
    ident, kind, _, _, _, ph_offset, sh_offset, _, _, ph_size, ph_count, sh_size, sh_count, _ = (
        _ELF64_HEADER.unpack_from(image)
    )
    if ident[4] != 2 or ident[5] != 1 or kind != _ET_DYN:
        return "not a 64-bit little-endian ELF shared object"
    size = len(image)
    if ph_count == 0 or ph_size < _PROGRAM_HEADER.size or ph_offset + ph_size * ph_count > size:
        return f"its program headers lie outside its {size} bytes (truncated?)"
    if sh_offset + sh_size * sh_count > size:
        return f"its section headers lie outside its {size} bytes (truncated?)"
    for index in range(ph_count):
        fields = _PROGRAM_HEADER.unpack_from(image, ph_offset + index * ph_size)
        segment_type, offset, file_size = fields[0], fields[2], fields[5]
        if segment_type == _PT_LOAD and offset + file_size > size:
            return f"a loadable segment ends at byte {offset + file_size} of {size} (truncated)"
    return None


def check_module(path: Path) -> None:
    """Raise OSError unless ``path`` may be loaded (see the module docstring)."""
    image = private_dirs.read_trusted(path)
    sidecar = path.with_name(path.name + ".sha256")
    try:
        want = private_dirs.read_trusted(sidecar).decode(errors="replace").strip()
    except FileNotFoundError as error:
        raise OSError(f"{sidecar} missing ({error})") from error
    if hashlib.sha256(image).hexdigest() != want:
        raise OSError(f"{path} does not match its recorded sha256 (damaged cache file)")
    problem = elf_problem(image)
    if problem:
        raise OSError(f"{path}: {problem}")
