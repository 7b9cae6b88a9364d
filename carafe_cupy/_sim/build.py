"""Building simulator modules: the host compiler, its flags, the kernel table
glued to the source, the scheduler object linked into every module, and the
atomic write of a finished build. Caching and loading are in ``cache``."""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .._core import env as _env
from .._core import private_dirs
from . import trace as _trace
from .common import HERE, SimulatorError, safe_name

# Everything the scheduler and the tracer hooks are built from.
_SHIM_FILES = (
    "cuda_sim.h",
    "cuda_sim_observer.h",
    "cuda_sim_runtime.cpp",
    "cuda_sim_fibers.h",
    "cuda_sim_orders.h",
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
ASAN_FLAGS = ("-fsanitize=address", "-fno-omit-frame-pointer", "-g")

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


_state_lock = threading.Lock()
_runtime_lock = threading.Lock()
_compile_count = 0
_compiler_info: dict[tuple[str, ...], str] = {}


def find_compiler() -> list[str]:
    cmd = _env.words("CXX")
    if cmd:
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
    return _env.flag("CARAFE_CUPY_SIM_ASAN")


def asan_loaded() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "__asan_init")
    except OSError:
        return False


def rewrite_source(source: str) -> str:
    """Turn ``extern __shared__ T name[];`` into the simulator's dynamic-shared macro."""
    return _DYN_SHARED_RE.sub(
        lambda m: f"CARAFE_DYNAMIC_SHARED({m.group(1).strip()}, {m.group(2)});", source
    )


def kernel_names(source: str, cxx: list[str], flags: list[str]) -> tuple[str, ...]:
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


def _glue(module_name: str, source: str, kernels: tuple[str, ...], may_block: bool) -> str:
    fname = safe_name(module_name)
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
        h.update(name.encode() + b"\0" + (HERE / name).read_bytes() + b"\0")
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
        shim = ["-I", str(HERE), "-include", str(HERE / "cuda_sim.h")]
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
        cmd = [*cxx, *flags, "-c", str(HERE / source), "-o", str(out)]
        _run_compiler(cmd, build, f"the simulator runtime ({source})")


def _runtime_object_path(
    directory: Path, flags: list[str], version: str, source: str = "cuda_sim_runtime.cpp"
) -> Path:
    h = hashlib.sha256()
    for part in (_shim_digest(), "\0".join(flags), version, source):
        h.update(part.encode() + b"\0\1\0")
    h.update((HERE / source).read_bytes())
    stem = "runtime" if source == "cuda_sim_runtime.cpp" else Path(source).stem
    return directory / f"{stem}-{h.hexdigest()[:32]}.o"


def _object_sources(traced: bool) -> list[str]:
    return ["cuda_sim_runtime.cpp"] + ([_trace.HOOKS_SOURCE] if traced else [])


def runtime_objects(directory: Path, spec: BuildSpec, traced: bool) -> list[Path]:
    """The cached scheduler objects a module built into ``directory`` links."""
    return [
        _runtime_object_path(directory, spec.flags, spec.version, source)
        for source in _object_sources(traced)
    ]


def _runtime_object(
    directory: Path,
    cxx: list[str],
    flags: list[str],
    version: str,
    source: str = "cuda_sim_runtime.cpp",
) -> tuple[Path, bool]:
    """Path of the cached object built from ``source``, and whether it was built just now.

    Only an object of this user's that nobody else can write is linked; any
    other file under its name is replaced by a fresh build."""
    final = _runtime_object_path(directory, flags, version, source)
    with _runtime_lock:
        if private_dirs.trusted_file(final) and final.stat().st_size > 0:
            return final, False
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".o")
        os.close(fd)
        try:
            _build_runtime_object(cxx, flags, Path(tmp), source)
            os.chmod(tmp, 0o600)  # the linker writes it with the umask's mode
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return final, True


def digest_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def compile_into(
    directory: Path, final: Path, spec: BuildSpec, name: str, traced: bool = False
) -> Path:
    """Build the module into ``final`` (and its ``.sha256``), atomically."""
    cxx, flags, glue, version = spec.cxx, spec.flags, spec.glue, spec.version
    # Build next to the final name, then rename: readers never see half a file.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".so")
    os.close(fd)
    sources = _object_sources(traced)
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
        digest = digest_file(Path(tmp))
        os.chmod(tmp, 0o600)  # the linker writes it with the umask's mode
        os.replace(tmp, final)
        _write_atomic(final.with_name(final.name + ".sha256"), digest + "\n")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return final




@dataclass(frozen=True)
class BuildSpec:
    """Everything a module's build depends on; ``key`` hashes all of it."""

    cxx: list[str]
    flags: list[str]
    glue: str
    kernels: tuple[str, ...]
    version: str
    key: str


def build_spec(module_name: str, source: str, traced: bool) -> BuildSpec:
    """The compiler, flags and glued source for a module, and their cache key."""
    source = rewrite_source(source)
    may_block = bool(_BLOCKING_RE.search(_COMMENT_RE.sub(" ", source)))
    asan = _asan_requested()
    if asan and traced:
        raise SimulatorError(_trace.ASAN_REFUSAL)
    if asan and not asan_loaded():
        raise SimulatorError(
            "CARAFE_CUPY_SIM_ASAN=1 needs AddressSanitizer's runtime loaded before Python "
            "starts. Run the process as:\n"
            '  LD_PRELOAD="$(g++ -print-file-name=libasan.so) '
            '$(g++ -print-file-name=libstdc++.so)" ASAN_OPTIONS=detect_leaks=0 '
            "CARAFE_CUPY_SIM_ASAN=1 python ..."
        )
    cxx = find_compiler()
    flags = list(_BASE_FLAGS) + (list(ASAN_FLAGS) if asan else [])
    flags += _env.words("CARAFE_CUPY_SIM_CXXFLAGS")
    kernels = kernel_names(source, cxx, flags)
    glue = _glue(module_name, source, kernels, may_block)
    version = _compiler_version(cxx)
    h = hashlib.sha256()
    for part in (glue, _shim_digest(), "\0".join(flags), version):
        h.update(part.encode())
        h.update(b"\0\1\0")
    if traced:
        h.update(_trace.build_digest().encode())
    key = h.hexdigest()
    return BuildSpec(cxx, flags, glue, kernels, version, key)


def compile_count() -> int:
    with _state_lock:
        return _compile_count
