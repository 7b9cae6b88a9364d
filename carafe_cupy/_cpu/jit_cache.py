"""Where Numba keeps the compiled CPU kernels: ``CARAFE_CUPY_CPU_CACHE``
(default ``~/.cache/carafe_cupy/cpu``), beside the package's other caches and
under the same rules (``_core.private_dirs``): a folder only this user can write,
created mode 0700, since Numba loads code from it.

A user's ``NUMBA_CACHE_DIR`` wins (Numba's own locator comes first). The kernels
go in a subfolder named by the Numba version and a digest of the kernel sources,
because Numba checks only the stamp of the file a function is in, not of the
helpers it calls. An unusable folder costs a warning, once, and the kernels are
cached in a private temporary folder for this process instead.

``register()`` runs before any ``@njit(cache=True)`` of the package is defined
(``jit_compile`` calls it on import): Numba picks a function's cache folder when
the function is decorated. This module imports Numba only there, so ``info`` can
read the folder without it.

``enable_kernel_cache(dispatcher)`` lets a kernel come from the cache without
Numba's per-process set-up of its compiler (``refresh``: it imports every
implementation Numba has, scipy.linalg among them, about 0.3 s), which a load
does not use: the cached machine code only needs Numba's runtime (NRT) in place.
A compile still does the whole set-up first, as Numba always does.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from pathlib import Path

from .._core import env as _env
from .._core import private_dirs as _private_dirs

CACHE_VARIABLE = "CARAFE_CUPY_CPU_CACHE"
_HERE = Path(__file__).resolve().parent
# The modules whose functions are cached here: every jit_*.py of this folder but the
# ones that only run the kernels, so a new kernel module is covered as it is added.
# A change to any of them is a new folder.
_RUNNING_FILES = frozenset({"jit_choice.py", "jit_dispatch.py", "jit_warmup.py"})
_KERNEL_FILES = tuple(
    sorted(path.name for path in _HERE.glob("jit_*.py") if path.name not in _RUNNING_FILES)
)

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


_kernel_cache_class: type | None = None


def _make_kernel_cache_class() -> type | None:
    """Numba's function cache with a load that sets up only Numba's runtime; None
    if this Numba lays its caching out differently (its own load is kept then)."""
    from numba.core import caching
    from numba.core.runtime import nrt

    base = caching.FunctionCache
    needed = ("_load_overload", "_guard_against_spurious_io_errors", "load_overload")
    if not all(hasattr(base, name) for name in needed) or not hasattr(nrt, "rtsys"):
        return None

    class KernelCache(base):
        def load_overload(self, sig, target_context):
            # What Numba's own load does, less target_context.refresh(): that set-up
            # is for typing and lowering, which a load skips; the loaded code calls
            # into the runtime, set up here (once per process; Numba's lock is held).
            nrt.rtsys.initialize(target_context)
            with self._guard_against_spurious_io_errors():
                return self._load_overload(sig, target_context)

    return KernelCache


def enable_kernel_cache(dispatcher) -> bool:
    """Cache a kernel (an ``@njit`` dispatcher made without ``cache=True``) in the
    package's folder, with the cache whose load skips Numba's compiler set-up.
    False if this Numba lays its caching out differently: the kernel then gets
    Numba's own cache, in the same folder."""
    global _kernel_cache_class
    with _lock:
        if _kernel_cache_class is None:
            _kernel_cache_class = _make_kernel_cache_class() or type(None)
        cache_class = _kernel_cache_class
    if cache_class is type(None):
        dispatcher.enable_caching()
        return False
    dispatcher._cache = cache_class(dispatcher.py_func)
    return True


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
