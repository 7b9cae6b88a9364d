"""Compiled simulator modules: found in the cache folder (or built there by
``build``), checked (``verify``: this user's, its recorded digest, a whole ELF
file), loaded with ctypes, and kept per process keyed on everything that went
into the build. Only a private cache folder is read (``_core.private_dirs``);
otherwise modules go to a private temporary folder removed at exit."""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import stat
import threading
import warnings
from pathlib import Path

from .._core import env as _env
from .._core import private_dirs as _private_dirs
from . import build as _build
from . import verify as _verify
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
_opened: set[str] = set()  # every path handed to dlopen in this process
_aliases = itertools.count()
_warned: set[str] = set()
CACHE_VARIABLE = "CARAFE_CUPY_SIM_CACHE"


def cache_dir() -> Path:
    """The configured module cache, absolute (a relative one is taken from the
    working folder now, since the compiler runs elsewhere)."""
    configured = _env.text(CACHE_VARIABLE)
    path = Path(configured).expanduser() if configured else _default_cache()
    return Path(os.path.abspath(path))


def _default_cache() -> Path:
    return Path.home() / ".cache" / "carafe_cupy" / "sim"


def cache_problem() -> str | None:
    """Why the configured cache is not used (modules then go to a private
    temporary folder), or None."""
    return _private_dirs.dir_problem(cache_dir(), CACHE_VARIABLE)


def _warn_once(message: str) -> None:
    with _state_lock:
        if message in _warned:
            return
        _warned.add(message)
    warnings.warn(message, RuntimeWarning, stacklevel=5)


def _fallback_cache() -> Path:
    return _private_dirs.fallback_dir("carafe_cupy_sim-")


def _trusted_cache() -> Path:
    """The configured cache when it is private; otherwise nothing in it is read."""
    try:
        return _private_dirs.private_dir(cache_dir(), CACHE_VARIABLE)
    except OSError as error:
        _warn_once(
            f"simulator modules are not read from or written to {cache_dir()}: {error}. "
            "They are compiled into a private temporary folder for this process instead."
        )
        return _fallback_cache()


def _blocked(paths: list[Path]) -> str | None:
    """A reason when a folder sits where a build goes (other files are replaced)."""
    for path in paths:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue
        except OSError as error:
            return f"{path} cannot be checked ({error})"
        if stat.S_ISDIR(mode):  # a rename cannot replace it
            return f"{path} is a folder where a build goes; remove it"
    return None


def _dlopen(path: Path) -> ctypes.CDLL:
    # dlopen hands back the library already loaded under the same name, so a
    # module rebuilt at a path loaded before is opened through a fresh hard link.
    with _state_lock:
        seen = str(path) in _opened
        _opened.add(str(path))
    if not seen:
        return ctypes.CDLL(str(path), mode=os.RTLD_NOW | os.RTLD_LOCAL)
    alias = path.with_name(f".load-{os.getpid()}-{next(_aliases)}-{path.name}")
    try:
        os.link(path, alias)
    except OSError:
        shutil.copyfile(path, alias)
    try:
        return ctypes.CDLL(str(alias), mode=os.RTLD_NOW | os.RTLD_LOCAL)
    finally:
        alias.unlink(missing_ok=True)


def module_file_name(module_name: str, key: str, traced: bool = False) -> str:
    """The cache file of a module whose build key is ``key``."""
    return f"{safe_name(module_name)}{'-traced' if traced else ''}-{key[:32]}.so"


def _load(path: Path, kernels: tuple[str, ...]) -> _Module:
    _verify.check_module(path)
    lib = _dlopen(path)
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
        fname = module_file_name(module_name, key, traced)
        directory = _trusted_cache()
        final = directory / fname
        mod = None
        if final.exists() or final.is_symlink():
            try:
                mod = _load(final, kernels)
            except OSError as exc:
                _warn_once(
                    f"cached simulator module {final} could not be loaded ({exc}); recompiling"
                )
        if mod is None:
            targets = [final, final.with_name(final.name + ".sha256")]
            targets += _build.runtime_objects(directory, spec, traced)
            blocked = _blocked(targets)
            if blocked or not os.access(directory, os.W_OK):
                if blocked:
                    _warn_once(f"simulator cache: {blocked}; compiling into a private "
                               "temporary folder for this process instead")
                directory = _fallback_cache()
                final = directory / fname
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


