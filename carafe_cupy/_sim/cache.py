"""Compiled simulator modules: found in the cache folder (or built there by
``build``), checked against their recorded digest, loaded with ctypes, and kept
per process keyed on everything that went into the build."""

from __future__ import annotations

import ctypes
import os
import tempfile
import threading
import warnings
from pathlib import Path

from . import build as _build
from .common import SimulatorError, safe_name


class _Module:
    def __init__(self, lib: ctypes.CDLL, path: str, kernels: tuple[str, ...]) -> None:
        self.lib = lib
        self.path = path
        self.kernels = kernels
        self.launch_fn = lib.carafe_sim_launch
        self.launch_fn.restype = ctypes.c_int
        self.launch_fn.argtypes = [
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_ulonglong,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_int,
            ctypes.c_ulonglong,
            ctypes.c_ulonglong,
            ctypes.c_char_p,
            ctypes.c_ulonglong,
        ]
        self.params_fn = lib.carafe_sim_kernel_params
        self.params_fn.restype = ctypes.c_int
        self.params_fn.argtypes = [
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_ulonglong),
            ctypes.c_int,
        ]
        self._sizes: dict[str, tuple[int, ...] | None] = {}

    def param_sizes(self, kernel: str) -> tuple[int, ...] | None:
        if kernel not in self._sizes:
            buf = (ctypes.c_ulonglong * 256)()
            n = self.params_fn(kernel.encode(), buf, 256)
            self._sizes[kernel] = None if n < 0 else tuple(int(buf[i]) for i in range(n))
        return self._sizes[kernel]


_state_lock = threading.Lock()
_key_locks: dict[str, threading.Lock] = {}
_modules: dict[str, _Module] = {}
_memo: dict[tuple[str, ...], _Module] = {}
_fallback_dir: str | None = None


def _cache_dir() -> Path:
    env = os.environ.get("CARAFE_CUPY_SIM_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "carafe_cupy" / "sim"


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


def _fallback_cache() -> Path:
    global _fallback_dir
    with _state_lock:
        if _fallback_dir is None:
            _fallback_dir = tempfile.mkdtemp(prefix="carafe_cupy_sim-")
        return Path(_fallback_dir)


def _verify(path: Path) -> None:
    # dlopen of a truncated library can SIGBUS instead of failing, so check the
    # digest recorded next to it before mapping it.
    sidecar = path.with_name(path.name + ".sha256")
    try:
        want = sidecar.read_text().strip()
    except OSError as exc:
        raise OSError(f"{sidecar} missing ({exc})") from exc
    if _build.digest_file(path) != want:
        raise OSError(f"{path} does not match its recorded sha256 (damaged cache file)")


def _load(path: Path, kernels: tuple[str, ...]) -> _Module:
    lib = ctypes.CDLL(str(path), mode=os.RTLD_NOW | os.RTLD_LOCAL)
    try:
        return _Module(lib, str(path), kernels)
    except AttributeError as exc:
        raise OSError(f"{path}: not a simulator module ({exc})") from exc


def get_module(module_name: str, source: str, traced: bool = False) -> _Module:
    # Hot path: a module already loaded for the same text and build settings
    # needs no regexes, compiler lookup or hashing (str hashes are cached).
    memo_key = (
        module_name,
        source,
        "traced" if traced else "",
        os.environ.get("CARAFE_CUPY_SIM_ASAN", ""),
        os.environ.get("CARAFE_CUPY_SIM_CXXFLAGS", ""),
        os.environ.get("CXX", ""),
    )
    mod = _memo.get(memo_key)
    if mod is not None:
        return mod
    mod = _get_module_slow(module_name, source, traced)
    with _state_lock:
        _memo[memo_key] = mod
    return mod


def _get_module_slow(module_name: str, source: str, traced: bool) -> _Module:
    spec = _build.build_spec(module_name, source, traced)
    key, kernels = spec.key, spec.kernels

    with _state_lock:
        mod = _modules.get(key)
        if mod is not None:
            return mod
        lock = _key_locks.setdefault(key, threading.Lock())
    with lock:
        with _state_lock:
            mod = _modules.get(key)
        if mod is not None:
            return mod
        fname = f"{safe_name(module_name)}{'-traced' if traced else ''}-{key[:32]}.so"
        directory = _cache_dir()
        if not _writable_dir(directory):
            if not (directory / fname).is_file():
                warnings.warn(
                    f"simulator cache directory {directory} is not writable; "
                    "compiling into a temporary directory instead",
                    RuntimeWarning,
                    stacklevel=3,
                )
                directory = _fallback_cache()
        final = directory / fname
        mod = None
        if final.is_file():
            try:
                _verify(final)
                mod = _load(final, kernels)
            except OSError as exc:
                warnings.warn(
                    f"cached simulator module {final} could not be loaded ({exc}); recompiling",
                    RuntimeWarning,
                    stacklevel=3,
                )
                if not _writable_dir(directory):
                    directory = _fallback_cache()
                    final = directory / fname
        if mod is None:
            _build.compile_into(directory, final, spec, module_name, traced)
            try:
                mod = _load(final, kernels)
            except OSError as exc:
                raise SimulatorError(
                    f"freshly compiled simulator module {final} for {module_name!r} "
                    f"could not be loaded: {exc}"
                ) from exc
        with _state_lock:
            _modules[key] = mod
        return mod


