"""The CuPy runtime: the only module that imports CuPy.

It compiles the modules from ``_kernels.sources`` with NVRTC through ``cupy.RawModule``,
keeps one loaded kernel per (device, module, kernel), launches it on a stream,
and compiles offline (no GPU) for the static checks and the cost model.
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
import sys
import tempfile
import threading
import warnings
from typing import Any

from .._core.errors import KernelCompileError, KernelsUnavailableError
from .._kernels import sources as _sources
from .._kernels.sources import KERNEL_MODULE, NVRTC_OPTIONS
from . import gpu_checks as _gpu_checks


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
    """The directory CuPy's disk cache uses (the same rule as CuPy's own)."""
    return os.environ.get("CUPY_CACHE_DIR", os.path.expanduser("~/.cupy/kernel_cache"))


def _ensure_cupy_cache_dir() -> None:
    """Make sure ``import cupy`` can create its kernel cache directory.

    CuPy creates ``CUPY_CACHE_DIR`` while it is imported, and the import fails
    if it cannot (a path under a file, a read-only mount). An unusable cache
    must not cost the GPU kernels, so CuPy gets a private temporary directory
    instead, with a warning.
    """
    directory = cupy_cache_dir()
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        fallback = tempfile.mkdtemp(prefix="carafe_cupy_kernel_cache_")
        warnings.warn(
            f"carafe_cupy: CuPy's kernel cache directory {directory!r} cannot be created "
            f"({error}); compiled kernels go to {fallback!r} for this process. Set "
            "CUPY_CACHE_DIR to a writable directory to keep them between runs.",
            RuntimeWarning,
            stacklevel=3,
        )
        os.environ["CUPY_CACHE_DIR"] = fallback


def cupy_importable() -> bool:
    try:
        _import_cupy()
    except KernelsUnavailableError:
        return False
    return True


def gpu_kernels_available(device: int | None = None) -> bool:
    """True when CuPy imports, sees a GPU, NVRTC can be loaded and can compile
    for that GPU (``device``; by default for at least one visible GPU)."""
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
    return None if None in reasons else reasons[0]


class _StreamHandle:
    """A raw ``cudaStream_t`` in the CUDA stream protocol."""

    def __init__(self, pointer: int) -> None:
        self.pointer = pointer

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.pointer)


class CupyRuntime:
    """NVRTC through ``cupy.RawModule``: compiled once per (device, module).

    CuPy keeps the binary in its disk cache (``CUPY_CACHE_DIR``); the lock
    makes concurrent first calls compile once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kernels: dict[tuple[int, str, str], Any] = {}
        self._disk_cache_warned = False
        self.compile_count = 0

    def kernel(self, module_name: str, source: str, kernel_name: str, device: int) -> Any:
        key = (device, module_name, kernel_name)
        kernel = self._kernels.get(key)
        if kernel is not None:
            return kernel
        cupy = _import_cupy()
        with self._lock:
            kernel = self._kernels.get(key)
            if kernel is None:
                kernel = self._compile(cupy, module_name, source, kernel_name, device)
                self.compile_count += 1
                self._kernels[key] = kernel
        return kernel

    def _compile(
        self, cupy: Any, module_name: str, source: str, kernel_name: str, device: int
    ) -> Any:
        try:
            try:
                return _load_kernel(cupy, source, kernel_name, device)
            except OSError as error:
                # CuPy could not read or write its disk cache (CUPY_CACHE_DIR);
                # compiling in memory still gives a working kernel.
                self._warn_disk_cache_unusable(error)
                with _cupy_cache_in_memory():
                    return _load_kernel(cupy, source, kernel_name, device)
        except cupy.cuda.compiler.CompileException as error:
            raise KernelCompileError(
                f"NVRTC failed to compile kernel {kernel_name!r} from {module_name}.cu:\n{error}"
            ) from error

    def _warn_disk_cache_unusable(self, error: OSError) -> None:
        if self._disk_cache_warned:
            return
        self._disk_cache_warned = True
        warnings.warn(
            f"carafe_cupy: CuPy's kernel cache in {cupy_cache_dir()!r} is unusable ({error}); "
            "kernels are compiled in memory, and again in every process. Point "
            "CUPY_CACHE_DIR at a writable directory to keep them.",
            RuntimeWarning,
            stacklevel=5,
        )

    def launch(
        self,
        module_name: str,
        source: str,
        kernel_name: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: tuple,
        shared_mem: int = 0,
        device: int = 0,
        stream: int = 0,
    ) -> None:
        cupy = _import_cupy()
        if (device, module_name, kernel_name) not in self._kernels:
            _gpu_checks.check_before_first_compile(cupy, device, stream, kernel_name)
        kernel = self.kernel(module_name, source, kernel_name, device)
        with cupy.cuda.Device(device), _cupy_stream(stream, device):
            kernel(grid, block, args, shared_mem=shared_mem)


def _load_kernel(cupy: Any, source: str, kernel_name: str, device: int) -> Any:
    """Compile (or take from CuPy's cache) one kernel and load it onto ``device``."""
    with cupy.cuda.Device(device):
        module = cupy.RawModule(code=source, options=NVRTC_OPTIONS)
        kernel = module.get_function(kernel_name)
        kernel.attributes  # noqa: B018 - forces the load onto this device
    return kernel


@contextlib.contextmanager
def _cupy_cache_in_memory():
    """Have CuPy compile without its disk cache (``CUPY_CACHE_IN_MEMORY=1``).

    CuPy reads the variable at each compile. It is process-wide, so a CuPy
    compile in another thread meanwhile also skips the disk cache, which costs
    that compile nothing but its caching.
    """
    previous = os.environ.get("CUPY_CACHE_IN_MEMORY")
    os.environ["CUPY_CACHE_IN_MEMORY"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["CUPY_CACHE_IN_MEMORY"]
        else:
            os.environ["CUPY_CACHE_IN_MEMORY"] = previous


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


@functools.lru_cache(maxsize=64)
def device_sms_and_arch(device: int) -> tuple[int, str]:
    """The GPU's SM count and architecture ("sm_90"), which the planner deals blocks to."""
    properties = _import_cupy().cuda.runtime.getDeviceProperties(device)
    return int(properties["multiProcessorCount"]), f"sm_{properties['major']}{properties['minor']}"


# ---------------------------------------------------------------- offline build


def compile_offline(arch: str, module_name: str = KERNEL_MODULE) -> str:
    """Compile a module for ``arch`` (e.g. "sm_80") without a GPU; return ptxas' report.

    Uses NVRTC's C API through ``cupy.cuda.nvrtc``, which needs no device
    (``RawModule`` does). Raises KernelCompileError with the log on failure.
    """
    return compile_offline_cubin(arch, module_name)[0]


def compile_offline_cubin(
    arch: str, module_name: str = KERNEL_MODULE, extra_options: tuple[str, ...] = ()
) -> tuple[str, bytes]:
    """Like :func:`compile_offline`, and also return the module's cubin for ``arch``
    (``extra_options``, e.g. ``("--generate-line-info",)``, go to NVRTC too)."""
    nvrtc = _import_cupy().cuda.nvrtc
    source = _sources.kernel_source(module_name)
    program = nvrtc.createProgram(source, f"{module_name}.cu", [], [])
    options = [f"--gpu-architecture={arch}", "-Xptxas=-v", *NVRTC_OPTIONS, *extra_options]
    failure = None
    cubin = b""
    try:
        nvrtc.compileProgram(program, options)
    except nvrtc.NVRTCError as error:
        failure = error
    log = nvrtc.getProgramLog(program)
    if failure is None:
        cubin = _whole_elf(bytes(nvrtc.getCUBIN(program)))
    nvrtc.destroyProgram(program)
    if failure is not None:
        message = f"NVRTC failed on {module_name}.cu for {arch}:\n{log}"
        raise KernelCompileError(message) from failure
    return log, cubin


def _whole_elf(image: bytes) -> bytes:
    """CuPy's ``getCUBIN`` drops the image's last byte (it sizes it like a C
    string); restore the length the ELF header declares (the tail is padding)."""
    if image[:4] != b"\x7fELF" or len(image) < 64:
        return image
    program_headers, section_headers = struct.unpack_from("<QQ", image, 0x20)
    ph_size, ph_count, sh_size, sh_count = struct.unpack_from("<HHHH", image, 0x36)
    end = max(program_headers + ph_size * ph_count, section_headers + sh_size * sh_count)
    return image + b"\0" * max(0, end - len(image))
