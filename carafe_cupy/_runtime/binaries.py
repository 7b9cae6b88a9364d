"""Kernel binaries: NVRTC, one option set, one compile for every use.

A module (``_kernels.sources``) is compiled for a :class:`Target` with
``_kernels.sources.NVRTC_OPTIONS`` and nothing else. The runtime loads that
binary onto the GPU (``cupy_runtime``), the offline checks read its ptxas report
(``tests/test_nvrtc_offline.py``) and the cost model disassembles it
(``_profile.static``): the binary that runs is the binary that is checked.

Binaries are kept in memory per process and on disk, per module, target,
source and NVRTC version, in ``CARAFE_CUPY_KERNEL_CACHE`` (default
``~/.cache/carafe_cupy/kernels``, created mode 0700). A binary is read only
from a folder no other user can write, and only when it is this user's file
(``_core.private_dirs``): a cubin planted there would run on the GPU. An
unusable or shared cache costs a warning, never the kernels.

No CuPy import: callers pass ``cupy.cuda.nvrtc`` in (tests pass a fake).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._core import env as _env
from .._core import private_dirs
from .._core.errors import KernelCompileError
from .._kernels.sources import NVRTC_OPTIONS

_FORMAT = b"carafe_cupy kernel binary 1\n"
_DIGEST = 32  # bytes of sha256


@dataclass(frozen=True)
class Target:
    """What NVRTC compiles for: a cubin for ``sm_XY``, or PTX for ``compute_XY``
    that the driver compiles for the GPU when the module is loaded."""

    arch: int  # XY: 90 for sm_90
    ptx: bool = False

    @property
    def name(self) -> str:
        return f"{'compute' if self.ptx else 'sm'}_{self.arch}"

    @classmethod
    def parse(cls, name: str) -> Target:
        """``sm_80`` or ``compute_90``."""
        kind, _, arch = name.partition("_")
        if kind not in ("sm", "compute") or not arch.isdigit():
            raise ValueError(f"target must be sm_XY or compute_XY, got {name!r}")
        return cls(int(arch), kind == "compute")

    def describe(self) -> str:
        if self.ptx:
            return f"PTX for {self.name}, compiled by the driver when loaded"
        return f"cubin for {self.name}"


@dataclass(frozen=True)
class Binary:
    """A compiled module: ``image`` is the cubin, or the PTX (NUL-terminated)."""

    module: str
    target: Target
    image: bytes
    log: str  # NVRTC's log, with ptxas' report (registers, spills) for a cubin


def compile_options(target: Target) -> list[str]:
    """Every option a module is compiled with, for ``target``."""
    return [f"--gpu-architecture={target.name}", *NVRTC_OPTIONS]


def compile_module(nvrtc: Any, module_name: str, source: str, target: Target) -> Binary:
    """Compile with NVRTC (no cache). KernelCompileError carries NVRTC's log."""
    program = nvrtc.createProgram(source, f"{module_name}.cu", [], [])
    try:
        failure = None
        try:
            nvrtc.compileProgram(program, compile_options(target))
        except nvrtc.NVRTCError as error:
            failure = error
        log = _text(nvrtc.getProgramLog(program))
        if failure is not None:
            message = f"NVRTC failed on {module_name}.cu for {target.name}:\n{log}"
            raise KernelCompileError(message) from failure
        if target.ptx:
            image = _as_bytes(nvrtc.getPTX(program))
            image = image if image.endswith(b"\0") else image + b"\0"
        else:
            image = _whole_elf(_as_bytes(nvrtc.getCUBIN(program)))
    finally:
        nvrtc.destroyProgram(program)
    return Binary(module_name, target, image, log)


CACHE_VARIABLE = "CARAFE_CUPY_KERNEL_CACHE"


def cache_dir() -> Path:
    """The configured binary cache, absolute."""
    explicit = _env.text(CACHE_VARIABLE)
    path = Path(explicit).expanduser() if explicit else Path.home() / ".cache/carafe_cupy/kernels"
    return Path(os.path.abspath(path))


def cache_problem() -> str | None:
    """Why the binary cache is not used (binaries are then kept in memory only), or None."""
    return private_dirs.dir_problem(cache_dir(), CACHE_VARIABLE)


_memory: dict[str, Binary] = {}
_memory_lock = threading.Lock()
_warned = False


def module_binary(nvrtc: Any, module_name: str, source: str, target: Target) -> Binary:
    """The module's binary for ``target``: from memory, from disk, or compiled."""
    version = ".".join(str(part) for part in nvrtc.getVersion())
    key = hashlib.sha256(
        "\0".join(
            (_FORMAT.decode(), module_name, source, version, *compile_options(target))
        ).encode()
    ).hexdigest()[:40]
    binary = _memory.get(key)
    if binary is not None:
        return binary
    try:
        # another user's folder or file is never read: it could hold their code
        path = private_dirs.private_dir(cache_dir(), CACHE_VARIABLE) / (
            f"{module_name}-{target.name}-{key}.bin"
        )
        binary = _read(path, module_name, target)
    except OSError as error:
        path = None
        _warn_unusable(error)
    if binary is None:
        binary = compile_module(nvrtc, module_name, source, target)
        try:
            if path is not None:
                _write(path, binary)
        except OSError as error:
            _warn_unusable(error)
    with _memory_lock:
        return _memory.setdefault(key, binary)


def _read(path: Path, module_name: str, target: Target) -> Binary | None:
    """A cached binary, or None where there is none or it is damaged."""
    try:
        data = private_dirs.read_trusted(path)
    except FileNotFoundError:
        return None
    except private_dirs.UntrustedPathError:
        if path.is_dir() and not path.is_symlink():
            raise  # cannot be replaced by a fresh binary
        return None  # replaced by a fresh binary of this user's
    start = len(_FORMAT) + _DIGEST
    body = data[start:]
    if not data.startswith(_FORMAT) or hashlib.sha256(body).digest() != data[len(_FORMAT) : start]:
        return None  # damaged: compiled again and overwritten
    (log_size,) = struct.unpack_from("<Q", body)
    log = body[8 : 8 + log_size].decode(errors="replace")
    return Binary(module_name, target, body[8 + log_size :], log)


def _write(path: Path, binary: Binary) -> None:
    """Write atomically (a temporary file renamed) into the private cache folder."""
    log = binary.log.encode()
    body = struct.pack("<Q", len(log)) + log + binary.image
    descriptor, scratch = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # mode 0600
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(_FORMAT + hashlib.sha256(body).digest() + body)
        os.replace(scratch, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(scratch)
        raise


def _warn_unusable(error: OSError) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    warnings.warn(
        f"carafe_cupy: the kernel cache in {str(cache_dir())!r} is unusable ({error}); "
        "kernels are compiled in memory, and again in every process. Point "
        "CARAFE_CUPY_KERNEL_CACHE at a writable folder private to this user to keep them.",
        RuntimeWarning,
        stacklevel=4,
    )


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _as_bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _whole_elf(image: bytes) -> bytes:
    """CuPy's ``getCUBIN`` drops the image's last byte (it sizes it like a C
    string); restore the length the ELF header declares (the tail is padding)."""
    if image[:4] != b"\x7fELF" or len(image) < 64:
        return image
    program_headers, section_headers = struct.unpack_from("<QQ", image, 0x20)
    ph_size, ph_count, sh_size, sh_count = struct.unpack_from("<HHHH", image, 0x36)
    end = max(program_headers + ph_size * ph_count, section_headers + sh_size * sh_count)
    return image + b"\0" * max(0, end - len(image))
