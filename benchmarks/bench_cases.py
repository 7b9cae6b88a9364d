"""What the benchmark measures: cases, inputs, byte counts, and the machine it runs on."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import torch

HERE = Path(__file__).resolve().parent
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODES = ("fwd", "fwd+bwd")
MiB = 1 << 20


class Case(NamedTuple):
    name: str
    n: int
    c: int
    h: int
    w: int
    k: int = 5
    g: int = 1
    s: int = 2

    @property
    def label(self) -> str:
        return (
            f"{self.n}x{self.c}x{self.h}x{self.w}->{self.h * self.s}x{self.w * self.s} "
            f"k{self.k} g{self.g} s{self.s}"
        )


# FPN levels of a 416x672 input (strides 32..4), upsampled x2 as in the CARAFE FPN neck.
FULL_CASES = (
    Case("fpn-13x21", 2, 256, 13, 21),
    Case("fpn-26x42", 2, 256, 26, 42),
    Case("fpn-52x84", 2, 256, 52, 84),
    Case("fpn-104x168", 2, 256, 104, 168),
    Case("square-64x64", 2, 256, 64, 64),
    Case("authors-100x100", 2, 1024, 100, 100),
    Case("fpn-52x84-k7", 2, 256, 52, 84, k=7),
    Case("fpn-52x84-g4", 2, 256, 52, 84, g=4),
)
QUICK_CASES = (
    Case("quick-13x21", 2, 64, 13, 21),
    Case("quick-26x42", 2, 64, 26, 42),
)
ALL_CASES = {c.name: c for c in FULL_CASES + QUICK_CASES}


def make_inputs(case: Case, dtype: torch.dtype, device: str, seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w, k, g, s = case[1:]
    feat = torch.randn(n, c, h, w, generator=gen).to(device=device, dtype=dtype)
    # Positive weights, as produced by a CARAFE mask encoder.
    masks = torch.rand(n, g * k * k, h * s, w * s, generator=gen).to(device=device, dtype=dtype)
    grad_out = torch.randn(n, c, h * s, w * s, generator=gen).to(device=device, dtype=dtype)
    return {"feat": feat, "masks": masks, "grad_out": grad_out}


def minimal_bytes(case: Case, dtype: torch.dtype, mode: str) -> int:
    """Bytes an ideal kernel must move: each input and output touched exactly once."""
    n, c, h, w, k, g, s = case[1:]
    elt = torch.empty((), dtype=dtype).element_size()
    feat, masks, out = n * c * h * w, n * g * k * k * h * s * w * s, n * c * h * s * w * s
    fwd = feat + masks + out
    # Backward adds grad_output read plus grad_features and grad_masks written.
    return elt * (fwd if mode == "fwd" else fwd + out + feat + masks)


def estimate_bytes(impl: str, case: Case, dtype: torch.dtype, mode: str) -> int:
    """Rough peak working set, used to skip runs that cannot fit instead of being OOM-killed."""
    n, c, h, w, k, g, s = case[1:]
    elt = torch.empty((), dtype=dtype).element_size()
    out = n * c * h * s * w * s
    if impl.startswith("unfold"):
        cols = out * k * k  # a (N, C*k*k, Ho*Wo) column tensor
        est = cols + 2 * out if mode == "fwd" else 3 * cols + 4 * out
    else:
        est = 3 * out if mode == "fwd" else 6 * out
    return elt * est + minimal_bytes(case, dtype, mode)


def available_bytes(device: str) -> int:
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


COMMIT_ENV = "CARAFE_CUPY_COMMIT"


def git_commit() -> str:
    """The commit of the carafe_cupy being measured, ``+dirty`` when tracked files differ.

    Looked up, in order: ``CARAFE_CUPY_COMMIT``; the git checkout that tracks the imported
    package (a clone on PYTHONPATH or an editable install), then the one that tracks these
    benchmark files; the installed package's metadata (``pip install git+...`` records the
    commit, ``pip install <dir>`` the directory it was built from). "unknown (why)" only when
    none of them says.
    """
    override = os.environ.get(COMMIT_ENV, "").strip()
    if override:
        return override
    reasons: list[str] = []
    package = _package_init()
    for tracked in (package, HERE / "bench_cases.py"):
        if tracked is not None:
            found = _git_head(tracked, reasons)
            if found:
                return found
    if package is not None:
        found = _installed_commit(package, reasons)
        if found:
            return found
    reasons.append(f"set {COMMIT_ENV} to name it")
    return "unknown (" + "; ".join(dict.fromkeys(reasons)) + ")"


def _package_init() -> Path | None:
    """``carafe_cupy/__init__.py`` as imported here (or as it would be)."""
    import importlib.util
    import sys

    module = sys.modules.get("carafe_cupy")
    origin = getattr(module, "__file__", None)
    if origin is None:
        try:
            spec = importlib.util.find_spec("carafe_cupy")
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None else None
    return Path(origin).resolve() if origin else None


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)


def _git_head(tracked: Path, reasons: list[str]) -> str | None:
    """HEAD of the git checkout that tracks the file ``tracked``, or None with the reason."""
    where = tracked.parent
    try:
        listed = _git(["ls-files", "--error-unmatch", tracked.name], where)
        if listed.returncode != 0:
            why = (listed.stderr.strip().splitlines() or ["not tracked"])[-1]
            reasons.append(f"{where} is not in a git checkout that tracks it ({why})")
            return None
        head = _git(["rev-parse", "HEAD"], where)
        if head.returncode != 0:
            why = (head.stderr.strip().splitlines() or ["?"])[-1]
            reasons.append(f"git rev-parse HEAD failed in {where} ({why})")
            return None
        dirty = _git(["status", "--porcelain", "--untracked-files=no"], where)
    except FileNotFoundError:
        reasons.append("git is not installed")
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        reasons.append(f"git failed in {where} ({type(exc).__name__}: {exc})")
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _installed_commit(package: Path, reasons: list[str]) -> str | None:
    """The commit recorded when the imported package was installed (PEP 610 direct_url.json):
    a VCS install's commit, or the HEAD of the local checkout it was built from."""
    import json
    from importlib import metadata
    from urllib.parse import unquote, urlparse

    try:
        distribution = metadata.distribution("carafe_cupy")
    except metadata.PackageNotFoundError:
        reasons.append("carafe_cupy is not installed as a distribution")
        return None
    installed = Path(str(distribution.locate_file("carafe_cupy/__init__.py"))).resolve()
    if installed != package:
        reasons.append(f"the installed carafe_cupy ({installed}) is not the one imported")
        return None
    try:
        direct = json.loads(distribution.read_text("direct_url.json") or "{}")
    except ValueError:
        direct = {}
    commit = direct.get("vcs_info", {}).get("commit_id")
    if commit:
        return f"{commit} (recorded at install from {direct.get('url', '?')})"
    url = direct.get("url", "")
    if "dir_info" in direct and url.startswith("file://"):
        source = Path(unquote(urlparse(url).path))
        found = _git_head(source / "carafe_cupy" / "__init__.py", reasons)
        if found:
            return f"{found} (HEAD now of {source}, which this install was built from)"
        return None
    reasons.append("the installed package records no commit and no source checkout")
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return _cpu_model()


def machine_label(device: str) -> str:
    """The machine in words, for titles: device name, and cores and threads on a CPU."""
    name = device_name(device)
    if device == "cpu":
        name += f", {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return name


def slugify(text: str) -> str:
    text = re.sub(r"\(r\)|\(tm\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def versions(carafe_version: str) -> dict[str, str]:
    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "carafe_cupy": carafe_version,
    }
    try:
        import cupy

        out["cupy"] = cupy.__version__
    except Exception as exc:  # cupy is optional on CPU machines
        out["cupy"] = f"not importable ({type(exc).__name__})"
    try:
        import numpy

        out["numpy"] = numpy.__version__
    except ImportError:
        out["numpy"] = "not importable"
    if torch.cuda.is_available():
        out["torch_cuda"] = str(torch.version.cuda)
    return out


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def short_error(exc: BaseException, limit: int = 160) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


IMPL_ORDER = ("carafe_cupy", "unfold_lowres", "unfold_upsampled", "shift", "mmcv", "carafe_ext")


def load_baselines() -> Any:
    """The sibling ``baselines.py``, imported by path so it works from a script or a wheel."""
    import importlib.util
    import sys

    name = "carafe_bench_baselines"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "baselines.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def implementations(device: str) -> tuple[dict[str, Any], dict[str, str], str]:
    """Callable per implementation that can run on ``device``, a note per one that can't,
    and carafe_cupy's version (or why it does not import)."""
    import importlib

    base = load_baselines()
    runnable: dict[str, Any] = {}
    notes: dict[str, str] = {}
    try:
        package = importlib.import_module("carafe_cupy")
        runnable["carafe_cupy"] = package.carafe
        version = str(getattr(package, "__version__", "unknown"))
    except Exception as exc:  # any import failure means "not available"
        version = f"not importable ({type(exc).__name__}: {exc})"
        notes["carafe_cupy"] = version
    runnable.update(base.BASELINES)
    for name, got in base.optional_baselines().items():
        if isinstance(got, str):
            notes[name] = got
        elif device != "cuda":
            notes[name] = "CUDA only, not run on CPU"
        else:
            runnable[name] = got
    return runnable, notes, version


def default_out_dir(device: str) -> Path:
    """``./carafe_bench_out/<date>-<device slug>``: under the current directory."""
    return (
        Path("carafe_bench_out") / f"{_dt.date.today().isoformat()}-{slugify(device_name(device))}"
    )


def resolve_device(device: str) -> tuple[str, list[str]]:
    notes: list[str] = []
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda", notes
        notes.append("CUDA not available: GPU part NOT run; benchmarked the CPU path only.")
        return "cpu", notes
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    if device not in ("cpu", "cuda"):
        raise SystemExit(f"unknown device {device!r}")
    return device, notes


def split_list(text: str | None) -> list[str] | None:
    """ "a, b" -> ["a", "b"]; None or "" -> None."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else None
