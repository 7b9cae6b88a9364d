"""The CuPy runtime: the only module that imports CuPy.

Kernels are compiled by NVRTC through ``cupy.cuda.nvrtc`` with the one option set
of ``_kernels.sources.NVRTC_OPTIONS`` (``binaries``; no CUDA headers needed) and
loaded with CuPy's module loading, one module per (device, module name), from
which every kernel of the module is taken. The offline compiles (the static
checks, the cost model) produce the very same binaries.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

from .._core import private_dirs
from .._core.errors import KernelCompileError, KernelsUnavailableError, install_hint
from .._kernels import sources as _sources
from .._kernels.sources import KERNEL_MODULE, NVRTC_OPTIONS  # noqa: F401 (re-exported)
from . import binaries as _binaries
from . import gpu_checks as _gpu_checks
from .arguments import KernelArguments
from .binaries import Binary, Target


@functools.cache
def _import_cupy() -> Any:
    if "cupy" not in sys.modules:
        _ensure_cupy_cache_dir()
    try:
        import cupy
    except Exception as error:  # ImportError, or a broken CUDA install
        raise KernelsUnavailableError(f"CuPy could not be imported: {error}") from error
    return cupy


def cupy_cache_dir() -> str:
    """The directory CuPy's own disk cache uses (the same rule as CuPy's)."""
    return os.environ.get("CUPY_CACHE_DIR", os.path.expanduser("~/.cupy/kernel_cache"))


def cupy_cache_problem() -> str | None:
    """Why CuPy's kernel cache folder is not used as it is, or None.

    CuPy loads the binaries it finds there onto the GPU, so the folder must be
    private like this package's caches, and hold only this user's files."""
    problem = private_dirs.dir_problem(cupy_cache_dir(), "CUPY_CACHE_DIR")
    folder = cupy_cache_dir()
    if problem is not None or not os.path.isdir(folder):
        return problem  # a missing folder is created private by _ensure_cupy_cache_dir
    foreign = private_dirs.foreign_entry(Path(folder))
    if foreign:
        return f"CuPy's kernel cache (CUPY_CACHE_DIR) holds a file that is not private: {foreign}"
    return None


def _ensure_cupy_cache_dir() -> None:
    """Give ``import cupy`` a kernel cache folder it can create and may trust.

    CuPy creates ``CUPY_CACHE_DIR`` while it is imported, and the import fails
    if it cannot (a path under a file, a read-only mount); it also loads any
    binary in it. The kernels here do not use that cache, so where the folder
    is unusable or not private, CuPy gets a private temporary folder instead
    (removed at exit), with a warning.
    """
    problem = cupy_cache_problem()
    if problem is None:
        try:
            private_dirs.private_dir(cupy_cache_dir(), "CUPY_CACHE_DIR")
        except OSError as error:
            problem = str(error)
    if problem is not None:
        fallback = private_dirs.fallback_dir("carafe_cupy_kernel_cache_")
        warnings.warn(
            f"carafe_cupy: CuPy's kernel cache folder {cupy_cache_dir()!r} is not used "
            f"({problem}); CuPy's own kernels go to {str(fallback)!r} for this process. Set "
            "CUPY_CACHE_DIR to a folder only this user can write to keep them between runs.",
            RuntimeWarning,
            stacklevel=3,
        )
        os.environ["CUPY_CACHE_DIR"] = str(fallback)


def cupy_import_error() -> str | None:
    """Why CuPy cannot be imported ("not installed" or its import error), or None."""
    if importlib.util.find_spec("cupy") is None:
        return "not installed"
    try:
        _import_cupy()
    except KernelsUnavailableError as error:
        return str(error)
    return None


def cupy_importable() -> bool:
    try:
        _import_cupy()
    except KernelsUnavailableError:
        return False
    return True


def gpu_kernels_available(device: int | None = None) -> bool:
    """True when CuPy imports, sees a GPU, and NVRTC compiles for it: for ``device``
    (a test kernel is also loaded onto it), or by default for at least one visible
    GPU (no GPU is touched then)."""
    return gpu_kernels_unavailable_reason(device) is None


def gpu_kernels_unavailable_reason(device: int | None = None) -> str | None:
    """Why :func:`gpu_kernels_available` is False, or None when it is True."""
    if not cupy_importable():
        return "CuPy could not be imported"
    cupy = _import_cupy()
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            return "CuPy sees no CUDA GPU"
        cupy.cuda.nvrtc.getVersion()
        devices = range(count) if device is None else (device,)
        reasons = [_gpu_checks.untargetable_reason(cupy, index) for index in devices]
    except Exception as error:
        return f"CUDA or NVRTC is not usable ({error})"
    if None not in reasons:
        return reasons[0]
    return _probe(cupy, None) or (None if device is None else _probe(cupy, device))


# A test kernel, compiled with the kernels' options before any real one: NVRTC
# alone (device None), or compiled for a GPU and loaded onto it.
_PROBE_SOURCE = 'extern "C" __global__ void carafe_probe(float* out) { if (out) *out = 1.0f; }\n'
_probes: dict[int | None, str | None] = {}
_probe_lock = threading.Lock()


def _probe(cupy: Any, device: int | None) -> str | None:
    with _probe_lock:
        if device not in _probes:
            _probes[device] = _run_probe(cupy, device)
        return _probes[device]


def _run_probe(cupy: Any, device: int | None) -> str | None:
    target = None
    try:
        if device is None:
            target = Target(_gpu_checks.supported_archs(cupy)[-1])
        else:
            target = _gpu_checks.compile_target(cupy, device)
        binary = _binaries.compile_module(cupy.cuda.nvrtc, "carafe_probe", _PROBE_SOURCE, target)
    except KernelsUnavailableError as error:
        return str(error).removeprefix("carafe_cupy: ").rstrip(".")
    except Exception as error:  # NVRTC missing or broken, options refused
        return _compile_failure(cupy, "a test kernel", target, error)
    if device is None:
        return None
    try:
        _load_module(cupy, binary, device)
    except Exception as error:  # the driver refuses the cubin or cannot compile the PTX
        return _load_failure(binary, device, error)
    return None


def _compile_failure(cupy: Any, what: str, target: Target | None, error: Exception) -> str:
    try:
        version = ".".join(str(part) for part in _gpu_checks.nvrtc_version(cupy))
    except Exception:
        version = "(version unknown)"
    aim = f" for {target.name}" if target is not None else ""
    return (
        f"NVRTC {version} could not compile {what}{aim} ({type(error).__name__}: "
        f"{_first_line(error)}); install NVRTC with the CUDA major version of your driver, "
        f"{install_hint('cuda13')} or {install_hint('cuda12')}"
    )


def _load_failure(binary: Binary, device: int, error: Exception) -> str:
    fix = (
        "update the NVIDIA driver, or install an NVRTC that targets this GPU "
        f"({install_hint('cuda13')})"
        if binary.target.ptx
        else "update the NVIDIA driver to one of NVRTC's CUDA version or later, or install "
        f"the NVRTC of the driver's CUDA version ({install_hint('cuda12')})"
    )
    return (
        f"cuda:{device} could not load {binary.module} as {binary.target.describe()} "
        f"({type(error).__name__}: {_first_line(error)}); {fix}"
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


def _load_module(cupy: Any, binary: Binary, device: int) -> Any:
    """Load a binary onto ``device`` with CuPy's module loading (the driver
    compiles PTX for the GPU here)."""
    with cupy.cuda.Device(device):
        module = cupy.cuda.function.Module()
        module.load(binary.image)
    return module


class _StreamHandle:
    """A raw ``cudaStream_t`` in the CUDA stream protocol."""

    def __init__(self, pointer: int) -> None:
        self.pointer = pointer

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.pointer)


class CupyRuntime:
    """Modules loaded once per (device, module name); every kernel of a module
    taken from it when it is loaded, so a loaded module needs no further driver
    work, even inside a CUDA graph capture. The lock makes concurrent first
    calls load once. ``compile_count`` counts module loads (each compiled, or
    read from the disk cache)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._modules: dict[tuple[int, str], dict[str, Any]] = {}
        self._launchable: dict[tuple[int, str, str], Any] = {}  # (device, module, kernel)
        self._driver: tuple[Any, Any, Any] | None = None
        self.compile_count = 0

    def loaded(self, module_name: str, device: int) -> bool:
        return (device, module_name) in self._modules

    def kernel(self, module_name: str, source: str, kernel_name: str, device: int) -> Any:
        kernels = self._modules.get((device, module_name))
        if kernels is None:
            cupy = _import_cupy()
            with self._lock:
                kernels = self._modules.get((device, module_name))
                if kernels is None:
                    kernels = self._load(cupy, module_name, source, kernel_name, device)
                    self.compile_count += 1
                    self._modules[(device, module_name)] = kernels
        kernel = kernels.get(kernel_name)
        if kernel is None:
            raise KernelCompileError(f"module {module_name} has no kernel {kernel_name!r}")
        return kernel

    def _load(
        self, cupy: Any, module_name: str, source: str, kernel_name: str, device: int
    ) -> dict[str, Any]:
        target = _gpu_checks.compile_target(cupy, device)
        try:
            binary = _binaries.module_binary(cupy.cuda.nvrtc, module_name, source, target)
        except KernelCompileError as error:
            raise KernelCompileError(
                f"NVRTC failed to compile kernel {kernel_name!r} from {module_name}.cu:\n{error}"
            ) from error
        except Exception as error:  # no usable NVRTC: the caller can fall back
            reason = _compile_failure(cupy, f"{module_name}.cu", target, error)
            raise KernelsUnavailableError(f"carafe_cupy: {reason}.") from error
        try:
            module = _load_module(cupy, binary, device)
            names = _module_kernel_names(module_name, kernel_name)
            return {name: module.get_function(name) for name in names}
        except Exception as error:
            reason = _load_failure(binary, device, error)
            raise KernelsUnavailableError(f"carafe_cupy: {reason}.") from error

    def launch(
        self,
        module_name: str,
        source: str,
        kernel_name: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: KernelArguments | tuple,
        shared_mem: int = 0,
        device: int = 0,
        stream: int = 0,
    ) -> None:
        """Launch on ``device`` and the raw ``stream``. Packed arguments go straight to
        the driver; a tuple of numpy scalars goes through CuPy's own marshalling."""
        kernel = self._launchable.get((device, module_name, kernel_name))
        if kernel is None:
            kernel = self._first_launch(module_name, source, kernel_name, device, stream)
        if type(args) is not KernelArguments:  # numpy scalars: CuPy's own marshalling
            cupy = _import_cupy()
            with cupy.cuda.Device(device), _cupy_stream(stream, device):
                kernel(grid, block, args, shared_mem=shared_mem)
            return
        # one cuLaunchKernel with the packed buffer's kernelParams, on the raw stream
        # handle, with the device current (its primary context holds the module)
        get_device, set_device, launch_kernel = self._driver or self._driver_calls()
        previous = get_device()
        if previous != device:
            set_device(device)
        try:
            params = args.layout.kernel_params(args.pointers)
            launch_kernel(kernel.ptr, *grid, *block, shared_mem, stream, params, 0)
        finally:
            if previous != device:
                set_device(previous)

    def _driver_calls(self) -> tuple[Any, Any, Any]:
        """CuPy's getDevice, setDevice and the driver's launchKernel, looked up once."""
        cupy = _import_cupy()
        runtime = cupy.cuda.runtime
        self._driver = (runtime.getDevice, runtime.setDevice, cupy.cuda.driver.launchKernel)
        return self._driver

    def _first_launch(
        self, module_name: str, source: str, kernel_name: str, device: int, stream: int
    ) -> Any:
        """The kernel, loading its module first if needed (after the checks that
        must come before a compile); remembered for the next launches."""
        if not self.loaded(module_name, device):
            _gpu_checks.check_before_first_compile(_import_cupy(), device, stream, kernel_name)
        kernel = self.kernel(module_name, source, kernel_name, device)
        self._launchable[(device, module_name, kernel_name)] = kernel
        return kernel


def _module_kernel_names(module_name: str, kernel_name: str) -> list[str]:
    """Every kernel a module defines (the asked one first)."""
    try:
        names = _sources.module_kernel_names(module_name)
    except ValueError:  # not one of the package's modules (tests)
        names = []
    return [kernel_name] + [name for name in names if name != kernel_name]


@functools.lru_cache(maxsize=64)
def _cupy_stream(pointer: int, device: int) -> Any:
    cupy = _import_cupy()
    if hasattr(cupy.cuda.Stream, "from_external"):
        return cupy.cuda.Stream.from_external(_StreamHandle(pointer))
    return cupy.cuda.ExternalStream(pointer, device)


@functools.lru_cache(maxsize=1)
def get_runtime() -> CupyRuntime:
    """The process-wide runtime."""
    return CupyRuntime()


def device_kernels_line(device: int) -> str:
    """What the kernels are on ``device``: the binary it loads, or why none."""
    reason = gpu_kernels_unavailable_reason(device)
    if reason is not None:
        return f"unavailable: {reason}"
    return _gpu_checks.compile_target(_import_cupy(), device).describe()


@functools.lru_cache(maxsize=64)
def device_sms_and_arch(device: int) -> tuple[int, str]:
    """The GPU's SM count and architecture ("sm_90"), which the planner deals blocks to."""
    properties = _import_cupy().cuda.runtime.getDeviceProperties(device)
    return int(properties["multiProcessorCount"]), f"sm_{properties['major']}{properties['minor']}"


# ---------------------------------------------------------------- offline build


def module_binary(target: str | Target, module_name: str = KERNEL_MODULE) -> Binary:
    """The binary the runtime loads on a GPU whose target is ``target`` (e.g.
    "sm_80", or "compute_90" for PTX), compiled without a GPU (or from the cache)."""
    if isinstance(target, str):
        target = Target.parse(target)
    nvrtc = _import_cupy().cuda.nvrtc
    return _binaries.module_binary(nvrtc, module_name, _sources.kernel_source(module_name), target)


def compile_offline(arch: str, module_name: str = KERNEL_MODULE) -> str:
    """Compile a module for ``arch`` (e.g. "sm_80") without a GPU; return ptxas' report.

    Raises KernelCompileError with the log on failure.
    """
    return module_binary(arch, module_name).log


def compile_offline_cubin(arch: str, module_name: str = KERNEL_MODULE) -> tuple[str, bytes]:
    """Like :func:`compile_offline`, and also return the module's cubin for ``arch``."""
    binary = module_binary(arch, module_name)
    return binary.log, binary.image
