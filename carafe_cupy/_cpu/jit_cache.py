"""Where Numba keeps the compiled CPU kernels: ``CARAFE_CUPY_CPU_CACHE``
(default ``~/.cache/carafe_cupy/cpu``), beside the package's other caches and
under the same rules (``_core.private_dirs``): a folder only this user can write,
created mode 0700, since Numba loads code from it.

A user's ``NUMBA_CACHE_DIR`` wins (Numba's own locator comes first). The kernels
go in a subfolder named by the Numba version and a digest of the kernel sources,
because Numba checks only the stamp of the file a function is in, not of the
helpers it calls. An unusable folder costs a warning, once, and the kernels are
cached in a private temporary folder for this process instead.

``register()`` runs before any ``@njit(cache=True)`` of the package is defined:
Numba picks a function's cache folder when the function is decorated. This module
imports Numba only there, so ``info`` can read the folder without it.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from pathlib import Path

from .._core import env as _env
from .._core import private_dirs as _private_dirs

CACHE_VARIABLE = "CARAFE_CUPY_CPU_CACHE"
# the modules whose functions are cached here; a change to any of them is a new folder
_KERNEL_FILES = (
    "jit_cache.py", "jit_dtypes.py", "jit_kernels.py", "jit_forward.py", "jit_backward.py"
)
_HERE = Path(__file__).resolve().parent

_lock = threading.Lock()
_chosen: Path | None = None


def configured_dir() -> Path:
    explicit = _env.text(CACHE_VARIABLE)
    if explicit:
        return Path(explicit).expanduser()
    return Path.home() / ".cache" / "carafe_cupy" / "cpu"


def cache_problem() -> str | None:
    """Why the configured folder is not used (a temporary one is), or None."""
    return _private_dirs.dir_problem(configured_dir(), CACHE_VARIABLE)


def _source_digest(numba_version: str) -> str:
    digest = hashlib.sha256(numba_version.encode())
    for name in _KERNEL_FILES:
        digest.update((_HERE / name).read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """The folder in use: under the configured one, or a private temporary one."""
    global _chosen
    import numba

    with _lock:
        if _chosen is None:
            name = f"numba-{numba.__version__}-{_source_digest(numba.__version__)}"
            try:
                _chosen = _private_dirs.private_dir(configured_dir() / name, CACHE_VARIABLE)
            except OSError as error:  # UntrustedPathError is one
                _chosen = _private_dirs.fallback_dir("carafe_cupy_cpu-")
                warnings.warn(
                    f"carafe_cupy: the CPU kernel cache in {str(configured_dir())!r} is not "
                    f"usable ({error}); compiled kernels go to {str(_chosen)!r} for this "
                    f"process only. Point {CACHE_VARIABLE} at a private writable folder to "
                    "keep them.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return _chosen


def user_cache_dir() -> str | None:
    """``NUMBA_CACHE_DIR`` as Numba read it, which then holds the kernels instead."""
    import numba

    return numba.config.CACHE_DIR or None


def _locator_class() -> type:
    """Numba cache locator for this package's kernel modules only (built on
    Numba's internal locator classes)."""
    from numba.core import caching

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


def register() -> bool:
    """Put the package's locator after Numba's NUMBA_CACHE_DIR one and before its
    in-tree and user-wide ones. False (Numba's own folders then) if this Numba
    lays its caching out differently."""
    from numba.core import caching

    try:
        implementation = getattr(caching, "CacheImpl", None) or caching._CacheImpl
        classes = implementation._locator_classes
        if not any(c.__name__ == "PackageCacheLocator" for c in classes):
            first = [c for c in classes if c.__name__ == "UserProvidedCacheLocator"]
            classes.insert(classes.index(first[0]) + 1 if first else 0, _locator_class())
    except AttributeError:
        return False
    return True
