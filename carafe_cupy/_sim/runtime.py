"""Run CUDA C++ kernel sources on the CPU.

A kernel module (CUDA C++ text without CUDA headers) is compiled by the host
C++ compiler with ``cuda_sim.h`` force-included, loaded with ctypes and
launched block by block; the threads of a block run as fibers (see
``cuda_sim_runtime.h``).

Environment:

* ``CARAFE_CUPY_SIM_ORDER``: ``forward`` (default), ``reverse`` or ``random``:
  the order in which :func:`get_runtime` resumes threads between barriers.
* ``CARAFE_CUPY_SIM_SEED``: seed for ``random`` (default 0).
* ``CARAFE_CUPY_SIM_CACHE``: directory of compiled modules (default
  ``~/.cache/carafe_cupy/sim``).
* ``CARAFE_CUPY_SIM_STACK``: fiber stack size in bytes (default 65536).
* ``CARAFE_CUPY_SIM_ASAN=1``: build modules with AddressSanitizer. The Python
  process must start with libasan preloaded, e.g.::

      LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)" \\
      ASAN_OPTIONS=detect_leaks=0 \\
          CARAFE_CUPY_SIM_ASAN=1 python -m pytest ...

* ``CARAFE_CUPY_SIM_CXXFLAGS``: extra compiler flags (part of the cache key);
  ``-DCARAFE_SIM_UCONTEXT`` forces the portable ucontext fiber switch.
* ``CXX``: the C++ compiler (default ``g++``, then ``c++``); it needs C++20.

Compiled modules are cached as ``<module>-<sha256>.so`` (plus a ``.sha256``
file checked before loading); the scheduler (``cuda_sim_runtime.cpp``) is built
once per compiler and flag set as ``runtime-<sha256>.o`` and linked into each
module. :meth:`SimRuntime.compile_count` counts module builds only.

Inside :func:`carafe_cupy._sim.trace.tracing` launches run a separately cached
traced build of the module and report their memory traffic (see ``trace.py``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from . import trace as _trace

__all__ = ["SimRuntime", "SimulatorError", "get_runtime"]

_HERE = Path(__file__).resolve().parent
# Everything the scheduler and the tracer hooks are built from.
_SHIM_FILES = (
    "cuda_sim.h",
    "cuda_sim_observer.h",
    "cuda_sim_runtime.cpp",
    "cuda_sim_trace_measure.h",
    "cuda_sim_trace_hooks.h",
)
_BASE_FLAGS = (
    "-std=c++20",
    "-O2",
    "-fPIC",
    # Each module keeps private copies of the scheduler and of its __shared__
    # statics; GNU unique symbols would merge them across modules.
    "-fvisibility=hidden",
    "-fno-gnu-unique",
    "-Wno-unknown-pragmas",
)
_ASAN_FLAGS = ("-fsanitize=address", "-fno-omit-frame-pointer", "-g")
_ORDERS = {"forward": 0, "reverse": 1, "random": 2}
_DEFAULT_STACK = 64 * 1024
_ERR_LEN = 8192

_KERNEL_RE = re.compile(
    r'extern\s+"C"\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?__global__\s+'
    r"(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+"
    r"(?:__launch_bounds__\s*\([^)]*\)\s*)?([A-Za-z_]\w*)\s*\("
)
_DYN_SHARED_RE = re.compile(
    r"\bextern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?"
    r"([A-Za-z_][\w:<>, ]*?(?:\s*\*)*)\s*(?:__align__\s*\(\s*\d+\s*\)\s*)?"
    r"\b([A-Za-z_]\w*)\s*\[\s*\]\s*;"
)
_COMMENT_RE = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
# Anything that can suspend a thread; a module without any of these runs each
# thread to completion without fibers.
_BLOCKING_RE = re.compile(r"__syncthreads|__syncwarp|__shfl|_sync\s*\(|__activemask")


class SimulatorError(RuntimeError):
    """The simulator could not compile or run a kernel."""


# Process-wide state: compiled modules are shared by all SimRuntime instances.
_state_lock = threading.Lock()
_runtime_lock = threading.Lock()
_key_locks: dict[str, threading.Lock] = {}
_modules: dict[str, _Module] = {}
_memo: dict[tuple[str, ...], _Module] = {}
_compile_count = 0
_compiler_info: dict[tuple[str, ...], str] = {}
_fallback_dir: str | None = None


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


def _find_compiler() -> list[str]:
    env = os.environ.get("CXX", "").strip()
    if env:
        cmd = shlex.split(env)
        if shutil.which(cmd[0]) is None:
            raise SimulatorError(
                f"C++ compiler {cmd[0]!r} from the CXX environment variable was not found. "
                "Install g++ (version 10 or newer, for C++20) or point CXX at a working "
                "C++20 compiler."
            )
        return cmd
    for name in ("g++", "c++"):
        path = shutil.which(name)
        if path:
            return [path]
    raise SimulatorError(
        "no C++ compiler found for the CUDA simulator: neither g++ nor c++ is on PATH and "
        "CXX is not set. Install g++ (e.g. the distribution's g++ / build-essential "
        "package) or set CXX to a C++20 compiler."
    )


def _compiler_version(cxx: list[str]) -> str:
    key = tuple(cxx)
    with _state_lock:
        if key in _compiler_info:
            return _compiler_info[key]
    try:
        out = subprocess.run(
            [*cxx, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
        info = out.stdout.strip().splitlines()[0] if out.stdout.strip() else out.stderr
    except OSError as exc:
        raise SimulatorError(f"cannot run C++ compiler {cxx[0]!r}: {exc}") from exc
    info = f"{shutil.which(cxx[0])}|{info}"
    with _state_lock:
        _compiler_info[key] = info
    return info


def _asan_requested() -> bool:
    return os.environ.get("CARAFE_CUPY_SIM_ASAN", "") not in ("", "0")


def _asan_loaded() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "__asan_init")
    except OSError:
        return False


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


def rewrite_source(source: str) -> str:
    """Turn ``extern __shared__ T name[];`` into the simulator's dynamic-shared macro."""
    return _DYN_SHARED_RE.sub(
        lambda m: f"CARAFE_DYNAMIC_SHARED({m.group(1).strip()}, {m.group(2)});", source
    )


def _kernel_names(source: str, cxx: list[str], flags: list[str]) -> tuple[str, ...]:
    text = _COMMENT_RE.sub(" ", source)
    if "#define" in text:
        # Kernels stamped out by macros only get their names after preprocessing.
        text = _preprocess(source, cxx, flags)
    return tuple(dict.fromkeys(_KERNEL_RE.findall(text)))


def _preprocess(source: str, cxx: list[str], flags: list[str]) -> str:
    defines = [flag for flag in flags if flag.startswith(("-D", "-U", "-std"))]
    # Without the shim, so that __global__ and extern "C" survive for the regex.
    cmd = [*cxx, *defines, "-E", "-P", "-x", "c++", "-"]
    try:
        proc = subprocess.run(cmd, input=source, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise SimulatorError(f"cannot run C++ compiler {cmd[0]!r}: {exc}") from exc
    if proc.returncode != 0:
        raise SimulatorError(
            f"preprocessing for the CUDA simulator failed.\ncommand: {shlex.join(cmd)}\n"
            f"{proc.stderr.strip()[:20000]}"
        )
    return proc.stdout


def _safe_name(module_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", module_name)[:64] or "module"


def _glue(module_name: str, source: str, kernels: tuple[str, ...], may_block: bool) -> str:
    fname = _safe_name(module_name)
    if not fname.endswith(".cu"):
        fname += ".cu"
    entries = ",\n".join(f'  carafe_sim::make_entry("{k}", &{k})' for k in kernels)
    table = entries or '  carafe_sim::KernelEntry{"", nullptr, nullptr, 0, nullptr, nullptr}'
    return (
        f'#line 1 "{fname}"\n{source}\n'
        '#line 1 "carafe_sim_glue.cpp"\n'
        "static const carafe_sim::KernelEntry carafe_sim_table[] = {\n"
        f"{table}\n}};\n"
        f"CARAFE_SIM_DEFINE_ENTRY_POINTS(carafe_sim_table, {len(kernels)}, "
        f"{'true' if may_block else 'false'})\n"
    )


def _shim_digest() -> str:
    h = hashlib.sha256()
    for name in _SHIM_FILES:
        h.update(name.encode() + b"\0" + (_HERE / name).read_bytes() + b"\0")
    return h.hexdigest()


def _run_compiler(cmd: list[str], cwd: str, what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)
    except OSError as exc:
        raise SimulatorError(f"cannot run C++ compiler {cmd[0]!r} for {what}: {exc}") from exc
    if proc.returncode != 0:
        log = (proc.stderr + proc.stdout).strip()
        if len(log) > 20000:
            log = log[:20000] + "\n... (log truncated)"
        raise SimulatorError(
            f"compiling {what} for the CUDA simulator failed (exit {proc.returncode}).\n"
            f"command: {shlex.join(cmd)}\n{log}"
        )


def _compile(
    cxx: list[str],
    flags: list[str],
    glue: str,
    out: Path,
    module_name: str,
    objects: list[Path],
    traced: bool = False,
) -> None:
    global _compile_count
    with tempfile.TemporaryDirectory(prefix="carafe_cupy_sim_build-") as build:
        src = Path(build) / "module.cpp"
        src.write_text(glue)
        shim = ["-I", str(_HERE), "-include", str(_HERE / "cuda_sim.h")]
        with _state_lock:
            _compile_count += 1
        if traced:
            _trace.compile_module(
                [*cxx, *flags],
                shim,
                src,
                objects,
                out,
                lambda cmd: _run_compiler(cmd, build, f"traced module {module_name!r}"),
            )
            return
        cmd = [*cxx, *flags, "-shared", *shim, str(src), *map(str, objects), "-o", str(out)]
        _run_compiler(cmd, build, f"module {module_name!r}")


def _build_runtime_object(cxx: list[str], flags: list[str], out: Path, source: str) -> None:
    # The scheduler is the same for every module: build it once, link it often.
    with tempfile.TemporaryDirectory(prefix="carafe_cupy_sim_build-") as build:
        cmd = [*cxx, *flags, "-c", str(_HERE / source), "-o", str(out)]
        _run_compiler(cmd, build, f"the simulator runtime ({source})")


def _runtime_object(
    directory: Path,
    cxx: list[str],
    flags: list[str],
    version: str,
    source: str = "cuda_sim_runtime.cpp",
) -> tuple[Path, bool]:
    """Path of the cached object built from ``source``, and whether it was built just now."""
    h = hashlib.sha256()
    for part in (_shim_digest(), "\0".join(flags), version, source):
        h.update(part.encode() + b"\0\1\0")
    h.update((_HERE / source).read_bytes())
    stem = "runtime" if source == "cuda_sim_runtime.cpp" else Path(source).stem
    final = directory / f"{stem}-{h.hexdigest()[:32]}.o"
    with _runtime_lock:
        if final.is_file() and final.stat().st_size > 0:
            return final, False
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".o")
        os.close(fd)
        try:
            _build_runtime_object(cxx, flags, Path(tmp), source)
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return final, True


def _digest_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _verify(path: Path) -> None:
    # dlopen of a truncated library can SIGBUS instead of failing, so check the
    # digest recorded next to it before mapping it.
    sidecar = path.with_name(path.name + ".sha256")
    try:
        want = sidecar.read_text().strip()
    except OSError as exc:
        raise OSError(f"{sidecar} missing ({exc})") from exc
    if _digest_file(path) != want:
        raise OSError(f"{path} does not match its recorded sha256 (damaged cache file)")


def _load(path: Path, kernels: tuple[str, ...]) -> _Module:
    lib = ctypes.CDLL(str(path), mode=os.RTLD_NOW | os.RTLD_LOCAL)
    try:
        return _Module(lib, str(path), kernels)
    except AttributeError as exc:
        raise OSError(f"{path}: not a simulator module ({exc})") from exc


def _compile_into(
    directory: Path,
    final: Path,
    cxx: list[str],
    flags: list[str],
    glue: str,
    name: str,
    version: str,
    traced: bool = False,
) -> Path:
    # Build next to the final name, then rename: readers never see half a file.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".so")
    os.close(fd)
    sources = ["cuda_sim_runtime.cpp"] + ([_trace.HOOKS_SOURCE] if traced else [])
    try:
        built = [_runtime_object(directory, cxx, flags, version, s) for s in sources]
        try:
            _compile(cxx, flags, glue, Path(tmp), name, [obj for obj, _ in built], traced)
        except SimulatorError:
            if all(fresh for _, fresh in built):
                raise
            # A damaged cached runtime object shows up as a link error: rebuild it
            # and try once more; a real error in the kernel source fails again.
            for obj, _ in built:
                obj.unlink(missing_ok=True)
            objects = [_runtime_object(directory, cxx, flags, version, s)[0] for s in sources]
            _compile(cxx, flags, glue, Path(tmp), name, objects, traced)
        digest = _digest_file(Path(tmp))
        os.replace(tmp, final)
        _write_atomic(final.with_name(final.name + ".sha256"), digest + "\n")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return final


def _get_module(module_name: str, source: str, traced: bool = False) -> _Module:
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
    source = rewrite_source(source)
    may_block = bool(_BLOCKING_RE.search(_COMMENT_RE.sub(" ", source)))
    asan = _asan_requested()
    if asan and traced:
        raise SimulatorError(_trace.ASAN_REFUSAL)
    if asan and not _asan_loaded():
        raise SimulatorError(
            "CARAFE_CUPY_SIM_ASAN=1 needs AddressSanitizer's runtime loaded before Python "
            "starts. Run the process as:\n"
            '  LD_PRELOAD="$(g++ -print-file-name=libasan.so) '
            '$(g++ -print-file-name=libstdc++.so)" ASAN_OPTIONS=detect_leaks=0 '
            "CARAFE_CUPY_SIM_ASAN=1 python ..."
        )
    cxx = _find_compiler()
    flags = list(_BASE_FLAGS) + (list(_ASAN_FLAGS) if asan else [])
    extra = os.environ.get("CARAFE_CUPY_SIM_CXXFLAGS", "")
    flags += shlex.split(extra)
    kernels = _kernel_names(source, cxx, flags)
    glue = _glue(module_name, source, kernels, may_block)
    version = _compiler_version(cxx)
    h = hashlib.sha256()
    for part in (glue, _shim_digest(), "\0".join(flags), version):
        h.update(part.encode())
        h.update(b"\0\1\0")
    if traced:
        h.update(_trace.build_digest().encode())
    key = h.hexdigest()

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
        fname = f"{_safe_name(module_name)}{'-traced' if traced else ''}-{key[:32]}.so"
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
            _compile_into(directory, final, cxx, flags, glue, module_name, version, traced)
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


def _marshal(args: tuple[Any, ...]) -> tuple[list[Any], Any, list[int]]:
    bufs = []
    sizes = []
    for i, a in enumerate(args):
        if not isinstance(a, np.generic):
            raise TypeError(
                f"kernel argument {i} must be a numpy scalar (np.uint64 for pointers, "
                f"np.int32, np.float32, ...), got {type(a).__name__}"
            )
        raw = a.tobytes()
        buf = ctypes.create_string_buffer(raw, max(len(raw), 8))
        bufs.append(buf)
        sizes.append(len(raw))
    ptrs = (ctypes.c_void_p * max(len(bufs), 1))(*[ctypes.addressof(b) for b in bufs])
    return bufs, ptrs, sizes


class SimRuntime:
    """Launches CUDA kernels on the CPU.

    ``order`` chooses how threads are resumed between barriers: ``"forward"``,
    ``"reverse"`` or ``"random"`` (shuffled with ``seed``). Running a kernel in
    more than one order exposes missing ``__syncthreads``.
    """

    def __init__(self, order: str = "forward", seed: int = 0, *, stack_size: int | None = None):
        if order not in _ORDERS:
            raise ValueError(f"order must be one of {sorted(_ORDERS)}, got {order!r}")
        self.order = order
        self.seed = int(seed)
        if stack_size is None:
            stack_size = int(os.environ.get("CARAFE_CUPY_SIM_STACK", _DEFAULT_STACK))
        self.stack_size = max(int(stack_size), 16 * 1024)
        self._launches = 0
        self._lock = threading.Lock()

    def launch(
        self,
        module_name: str,
        source: str,
        kernel_name: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: tuple[Any, ...],
        shared_mem: int = 0,
    ) -> None:
        """Run ``kernel_name`` from ``source`` like ``cuLaunchKernel`` would."""
        grid = tuple(int(g) for g in grid)
        block = tuple(int(b) for b in block)
        if len(grid) != 3 or len(block) != 3:
            raise ValueError("grid and block must have three entries")
        if min(grid) < 1 or min(block) < 1:
            raise SimulatorError(f"invalid launch configuration grid={grid} block={block}")
        if max(grid) >= 2**32 or block[0] * block[1] * block[2] > 1024:
            raise SimulatorError(f"invalid launch configuration grid={grid} block={block}")
        session = _trace.active_session()
        mod = _get_module(module_name, source, traced=session is not None)
        if kernel_name not in mod.kernels:
            raise SimulatorError(
                f"kernel {kernel_name!r} not found in module {module_name!r} "
                f'(extern "C" __global__ kernels found: {", ".join(mod.kernels) or "none"})'
            )
        bufs, ptrs, sizes = _marshal(tuple(args))
        expected = mod.param_sizes(kernel_name)
        if expected is not None:
            if len(expected) != len(sizes):
                raise SimulatorError(
                    f"kernel {kernel_name!r} takes {len(expected)} parameters, "
                    f"got {len(sizes)} arguments"
                )
            for i, (want, got) in enumerate(zip(expected, sizes)):
                if want != got:
                    raise SimulatorError(
                        f"kernel {kernel_name!r} parameter {i} is {want} bytes, but argument "
                        f"{i} is a {np.asarray(args[i]).dtype} ({got} bytes)"
                    )
        with self._lock:
            self._launches += 1
            launch_seed = (self.seed * 0x9E3779B97F4A7C15 + self._launches) & (2**64 - 1)
        err = ctypes.create_string_buffer(_ERR_LEN)
        g = (ctypes.c_uint * 3)(*grid)
        b = (ctypes.c_uint * 3)(*block)
        call = functools.partial(
            mod.launch_fn,
            kernel_name.encode(),
            g,
            b,
            int(shared_mem),
            ptrs,
            _ORDERS[self.order],
            launch_seed,
            self.stack_size,
            err,
            _ERR_LEN,
        )
        if session is None:
            rc = call()
        else:
            launch = (module_name, source, kernel_name, grid, block, int(shared_mem))
            rc = session.launch(mod.lib, mod.path, launch, call)
        del bufs
        if rc != 0:
            raise SimulatorError(f"module {module_name!r}: {err.value.decode(errors='replace')}")

    def compile_count(self) -> int:
        """Number of C++ compilations this process has run (all runtimes)."""
        with _state_lock:
            return _compile_count


_runtime: SimRuntime | None = None


def get_runtime() -> SimRuntime:
    """The process-wide runtime, configured from ``CARAFE_CUPY_SIM_ORDER``/``_SEED``."""
    global _runtime
    with _state_lock:
        if _runtime is None:
            order = os.environ.get("CARAFE_CUPY_SIM_ORDER", "forward").strip().lower()
            if order not in _ORDERS:
                raise SimulatorError(
                    f"CARAFE_CUPY_SIM_ORDER must be forward, reverse or random, got {order!r}"
                )
            seed = int(os.environ.get("CARAFE_CUPY_SIM_SEED", "0") or 0)
            _runtime = SimRuntime(order, seed)
        return _runtime
