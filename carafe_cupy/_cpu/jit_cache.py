"""Where Numba keeps the compiled CPU kernels: ``CARAFE_CUPY_CPU_CACHE``
(default ``~/.cache/carafe_cupy/cpu``), beside the package's other caches and,
like them, private to the user.

A user's ``NUMBA_CACHE_DIR`` wins (Numba's own locator comes first). The folder
is named by the Numba version and a digest of the kernel sources, because Numba
checks only the stamp of the file a function is in, not of the helpers it calls.
An unwritable folder costs a warning, once, and the kernels are cached in a
temporary folder for this process instead.

Imported before any ``@njit(cache=True)`` of the package is defined: Numba picks
a function's cache folder when the function is decorated.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from pathlib import Path

import numba
from numba.core import caching

# the modules whose functions are cached here; a change to any of them is a new folder
_KERNEL_FILES = ("jit_cache.py", "jit_dtypes.py", "jit_kernels.py")
_HERE = Path(__file__).resolve().parent

_lock = threading.Lock()
_chosen: Path | None = None


def configured_dir() -> Path:
    explicit = os.environ.get("CARAFE_CUPY_CPU_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    return Path.home() / ".cache" / "carafe_cupy" / "cpu"


def _source_digest() -> str:
    digest = hashlib.sha256(numba.__version__.encode())
    for name in _KERNEL_FILES:
        digest.update((_HERE / name).read_bytes())
    return digest.hexdigest()[:16]


def _writable(path: Path) -> bool:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)  # private to the user
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def cache_dir() -> Path:
    """The folder in use: the configured one, or a temporary one if that is unusable."""
    global _chosen
    with _lock:
        if _chosen is None:
            wanted = configured_dir() / f"numba-{numba.__version__}-{_source_digest()}"
            if _writable(wanted):
                _chosen = wanted
            else:
                _chosen = Path(tempfile.mkdtemp(prefix="carafe_cupy_cpu-"))
                warnings.warn(
                    f"carafe_cupy: the CPU kernel cache in {str(configured_dir())!r} is not "
                    f"writable; compiled kernels go to {str(_chosen)!r} for this process only. "
                    "Point CARAFE_CUPY_CPU_CACHE at a writable directory to keep them.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return _chosen


def user_cache_dir() -> str | None:
    """``NUMBA_CACHE_DIR`` as Numba read it, which then holds the kernels instead."""
    return numba.config.CACHE_DIR or None


def _locator_class() -> type:
    """Numba cache locator for this package's kernel modules only (built on
    Numba's internal locator classes)."""

    class PackageCacheLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = str(cache_dir())

        def get_cache_path(self):
            return self._cache_path

        @classmethod
        def from_function(cls, py_func, py_file):
            path = Path(py_file).resolve()
            if path.parent != _HERE or path.name not in _KERNEL_FILES:
                return None
            return super().from_function(py_func, py_file)

    return PackageCacheLocator


def _register() -> bool:
    """Put the package's locator after Numba's NUMBA_CACHE_DIR one and before its
    in-tree and user-wide ones. False (Numba's own folders then) if this Numba
    lays its caching out differently."""
    try:
        implementation = getattr(caching, "CacheImpl", None) or caching._CacheImpl
        classes = implementation._locator_classes
        locator = _locator_class()
    except AttributeError:
        return False
    if not any(c.__name__ == "PackageCacheLocator" for c in classes):
        first = [c for c in classes if c.__name__ == "UserProvidedCacheLocator"]
        classes.insert(classes.index(first[0]) + 1 if first else 0, locator)
    return True


REGISTERED = _register()
