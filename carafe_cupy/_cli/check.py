"""Self-test behind ``python -m carafe_cupy check`` and the ``info`` report."""

from __future__ import annotations

import importlib
import platform
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import __version__
from .._array import refs as _arrays
from .._core.errors import CPU_TORCH_HINT
from .._kernels import sources as _sources
from .._runtime import cupy_runtime as _cupy_runtime
from .._runtime import launch as _launch
from . import environment as _environment

# (N, C, H, W, kernel_size, group_size, scale_factor, stride, dilation): common, odd
# and tiny CARAFE shapes, then strided (involution, content-aware downsampling)
# and dilated reassembly
CHECK_CONFIGS = (
    (2, 8, 6, 7, 5, 2, 2, 1, 1),
    (1, 4, 5, 4, 3, 1, 3, 1, 1),
    (2, 6, 3, 2, 7, 3, 1, 1, 1),
    (1, 4, 4, 4, 1, 4, 4, 1, 1),
    (2, 8, 9, 8, 7, 2, 1, 2, 1),
    (1, 4, 7, 6, 5, 1, 1, 2, 1),
    (1, 6, 6, 5, 3, 3, 1, 3, 2),
    (1, 4, 4, 5, 3, 2, 2, 1, 2),
)
# Worst relative error allowed per storage dtype (against a float64 reference).
TOLERANCES = {"float64": 1e-10, "float32": 1e-5, "float16": 1e-2, "bfloat16": 3e-2}


def numpy_reference(
    features: np.ndarray,
    masks: np.ndarray,
    grad_output: np.ndarray,
    k: int,
    g: int,
    s: int,
    t: int = 1,
    d: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(output, grad_features, grad_masks) in float64, one tap at a time (stride t,
    dilation d: tap (i, j) of center (y, x) reads padded row y*t + i*d, col x*t + j*d)."""
    n, c, h, w = features.shape
    reach = (k - 1) // 2 * d
    rows, cols = -(-h // t), -(-w // t)  # window centers
    features = features.astype(np.float64)
    masks = masks.astype(np.float64).reshape(n, g, k * k, rows * s, cols * s)
    grad_output = grad_output.astype(np.float64).reshape(n, g, c // g, rows * s, cols * s)
    padded = np.zeros((n, g, c // g, h + 2 * reach, w + 2 * reach))
    padded[..., reach : reach + h, reach : reach + w] = features.reshape(n, g, c // g, h, w)
    grad_padded = np.zeros_like(padded)
    output = np.zeros_like(grad_output)
    grad_masks = np.zeros_like(masks)
    for i in range(k):
        for j in range(k):
            tap_rows = slice(i * d, i * d + (rows - 1) * t + 1, t)
            tap_cols = slice(j * d, j * d + (cols - 1) * t + 1, t)
            window = padded[..., tap_rows, tap_cols].repeat(s, axis=3).repeat(s, axis=4)
            weight = masks[:, :, None, i * k + j]
            output += weight * window
            grad_masks[:, :, i * k + j] = (grad_output * window).sum(axis=2)
            contribution = grad_output * weight
            contribution = contribution.reshape(n, g, c // g, rows, s, cols, s).sum((4, 6))
            grad_padded[..., tap_rows, tap_cols] += contribution
    grad_features = grad_padded[..., reach : reach + h, reach : reach + w].reshape(n, c, h, w)
    return (
        output.reshape(n, c, rows * s, cols * s),
        grad_features,
        grad_masks.reshape(n, g * k * k, rows * s, cols * s),
    )


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    return float(np.abs(actual.astype(np.float64) - expected).max(initial=0.0)) / scale


@dataclass
class CheckResult:
    """One backend, dtype and shape: ``status`` is "pass", "FAIL" or "skipped"."""

    backend: str
    dtype: str
    config: tuple[int, ...]
    error: float
    status: str
    note: str = ""


# A backend maps numpy float64 inputs to numpy outputs (output, grad_features, grad_masks).
Backend = Callable[[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...], str], tuple]


def _torch_backend(device: str) -> Backend:
    import torch

    import carafe_cupy

    def run(features, masks, grad_output, params, dtype):
        torch_dtype = getattr(torch, dtype)

        def load(array):
            return torch.from_numpy(array).to(device=device, dtype=torch_dtype)

        features_t = load(features).requires_grad_()
        masks_t = load(masks).requires_grad_()
        output = carafe_cupy.reassemble(features_t, masks_t, *params)
        output.backward(load(grad_output))
        return tuple(
            tensor.detach().double().cpu().numpy()
            for tensor in (output, features_t.grad, masks_t.grad)
        )

    return run


def _cupy_backend() -> Backend:
    cupy = _arrays.cupy_module()

    import carafe_cupy

    def run(features, masks, grad_output, params, dtype):
        if dtype == "bfloat16":
            raise _Skip("CuPy arrays have no bfloat16 dtype")
        features_c, masks_c, grad_c = (
            cupy.asarray(a.astype(dtype)) for a in (features, masks, grad_output)
        )
        output = carafe_cupy.reassemble(features_c, masks_c, *params)
        grads = carafe_cupy.reassemble_backward(grad_c, features_c, masks_c, *params)
        return tuple(cupy.asnumpy(a).astype(np.float64) for a in (output, *grads))

    return run


def _numpy_simulator_backend() -> Backend:
    import carafe_cupy

    def run(features, masks, grad_output, params, dtype):
        if dtype == "bfloat16":
            raise _Skip("numpy has no bfloat16 dtype")
        arrays = [a.astype(dtype) for a in (features, masks, grad_output)]
        output = carafe_cupy.reassemble(arrays[0], arrays[1], *params)
        grads = carafe_cupy.reassemble_backward(arrays[2], arrays[0], arrays[1], *params)
        return tuple(a.astype(np.float64) for a in (output, *grads))

    return run


class _Skip(Exception):
    pass


def available_backends() -> tuple[dict[str, Backend], list[str]]:
    """Backends to check, and notes on those that are not available here."""
    backends: dict[str, Backend] = {}
    notes: list[str] = []
    try:
        import torch
    except ImportError:
        torch = None
        notes.append("torch is not installed: the torch CPU and CUDA paths were not checked")
    if torch is not None:
        simulated = " (kernels on the simulator)" if _launch.simulator_enabled() else ""
        backends[f"torch cpu{simulated}"] = _torch_backend("cpu")
        if torch.cuda.is_available():
            backends["torch cuda"] = _torch_backend("cuda")
        else:
            notes.append("no CUDA GPU visible to torch: the torch GPU path was not checked")
    if _launch.simulator_enabled():
        backends["numpy (kernels on the simulator)"] = _numpy_simulator_backend()
    if _cupy_runtime.gpu_kernels_available(0):  # CuPy's current device
        backends["cupy"] = _cupy_backend()
    elif _launch.simulator_enabled():
        notes.append(
            "CuPy with a GPU and NVRTC is not available: the CuPy path was not checked; "
            "CARAFE_CUPY_SIMULATOR is on, so the same CUDA kernels were checked on the CPU "
            "simulator instead (the rows marked 'kernels on the simulator')"
        )
    else:
        notes.append(
            "CuPy with a GPU and NVRTC is not available: the CuPy path was not checked. "
            "CARAFE_CUPY_SIMULATOR=1 python -m carafe_cupy check runs the same CUDA kernels "
            "on the CPU simulator (on numpy arrays and torch CPU tensors; no GPU or CuPy "
            "needed, slower)"
        )
    return backends, notes


def run_checks(seed: int = 0) -> tuple[list[CheckResult], list[str]]:
    backends, notes = available_backends()
    rng = np.random.default_rng(seed)
    results = []
    for config in CHECK_CONFIGS:
        n, c, h, w, k, g, s, t, d = config
        out_h, out_w = -(-h // t) * s, -(-w // t) * s
        features = rng.standard_normal((n, c, h, w))
        masks = rng.random((n, g * k * k, out_h, out_w))
        grad_output = rng.standard_normal((n, c, out_h, out_w))
        for dtype in _sources.SUPPORTED_DTYPES:
            # The reference sees the inputs after rounding to the storage dtype.
            rounded = [_round_to(a, dtype) for a in (features, masks, grad_output)]
            expected = numpy_reference(*rounded, k, g, s, t, d)
            for name, backend in backends.items():
                try:
                    actual = backend(*rounded, (k, g, s, t, d), dtype)
                except _Skip as skip:
                    results.append(
                        CheckResult(name, dtype, config, float("nan"), "skipped", str(skip))
                    )
                    continue
                error = max(_relative_error(a, e) for a, e in zip(actual, expected))
                status = "pass" if error <= TOLERANCES[dtype] else "FAIL"
                results.append(CheckResult(name, dtype, config, error, status))
    return results, notes


def _round_to(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        bits = array.astype(np.float32).view(np.uint32)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return rounded.astype(np.uint32).view(np.float32).astype(np.float64)
    return array.astype(dtype).astype(np.float64)


def format_check_table(results: list[CheckResult]) -> str:
    lines = [
        "| backend | dtype | N,C,H,W,k,G,s,t,d | max rel. error | result |",
        "| --- | --- | --- | --- | --- |",
    ]
    for result in results:
        verdict = f"{result.status} ({result.note})" if result.note else result.status
        config = ",".join(str(v) for v in result.config)
        lines.append(
            f"| {result.backend} | {result.dtype} | {config} | {result.error:.2e} | {verdict} |"
        )
    return "\n".join(lines)


def summary_lines(results: list[CheckResult]) -> list[str]:
    """The closing line (passed, skipped and failed counted apart), or, when nothing could
    be checked, what to install or switch on so that something can."""
    if not results:
        return [
            "nothing was checked: no backend is available on this machine.",
            f"Install PyTorch (on a CPU-only machine, {CPU_TORCH_HINT}) to check the CPU path,",
            "or run the CUDA kernels on the CPU simulator: "
            "CARAFE_CUPY_SIMULATOR=1 python -m carafe_cupy check",
        ]
    counts = {status: sum(r.status == status for r in results) for status in _STATUSES}
    backends = ", ".join(sorted({result.backend for result in results}))
    return [
        f"{counts['pass']} passed, {counts['skipped']} skipped, {counts['FAIL']} failed "
        f"(of {len(results)}; backends: {backends})"
    ]


_STATUSES = ("pass", "skipped", "FAIL")


def _version(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except Exception as error:  # not installed, or fails to import
        return f"not available ({type(error).__name__})"


def info_lines() -> list[str]:
    # CuPy is imported the runtime's way first: it settles CuPy's cache folder.
    cupy_error = _cupy_runtime.cupy_import_error()
    lines = [
        f"carafe_cupy {__version__}",
        f"python {platform.python_version()} ({platform.machine()})",
        f"numpy {_version('numpy')}",
        f"torch {_version('torch')}",
        f"cupy {_version('cupy') if cupy_error is None else f'not available ({cupy_error})'}",
    ]
    nvrtc = "not available"
    gpus: list[str] = []
    if cupy_error is None:
        cupy = _arrays.cupy_module()
        try:
            nvrtc = ".".join(str(v) for v in cupy.cuda.nvrtc.getVersion())
        except Exception as error:
            nvrtc = f"not available ({type(error).__name__})"
        try:
            for index in range(cupy.cuda.runtime.getDeviceCount()):
                name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
                gpus.append(f"cuda:{index} {name.decode() if isinstance(name, bytes) else name}")
        except Exception:
            pass
    lines.append(f"NVRTC {nvrtc}")
    lines.append(f"GPUs: {', '.join(gpus) if gpus else 'none visible'}")
    for index in range(len(gpus)):
        lines.append(f"cuda:{index} kernels: {_cupy_runtime.device_kernels_line(index)}")
    lines.append(f"kernel sources: {_sources.cuda_source_dir()}")
    options = " ".join(_sources.NVRTC_OPTIONS)
    lines.append(f"NVRTC options: {options} (NVRTC alone: no CUDA headers or toolkit needed)")
    lines += _environment.cache_lines()
    try:
        simulator = "on" if _launch.simulator_enabled() else "off"
    except ValueError as error:
        simulator = f"off ({error})"
    lines.append(f"simulator (CARAFE_CUPY_SIMULATOR): {simulator}")
    try:
        import torch

        from .._torch.common import backend_name

        lines.append(f"torch CPU tensors use: {backend_name(torch.device('cpu'))}")
        if torch.cuda.is_available():
            lines.append(f"torch CUDA tensors use: {backend_name(torch.device('cuda'))}")
    except ImportError:
        pass
    except ValueError as error:  # an environment variable that cannot be parsed
        lines.append(f"torch tensors use: unknown ({error})")
    lines.append(f"cupy arrays use: {cupy_arrays_line()}")
    if simulator == "on":
        lines.append("numpy arrays use: cuda kernels on the CPU simulator")
    return lines + _environment.environment_lines()


def cupy_arrays_line() -> str:
    """What CuPy arrays run on, or precisely which of CuPy, a GPU and NVRTC is missing and
    what to do about it."""
    try:
        simulator_on = _launch.simulator_enabled()
    except ValueError:
        simulator_on = False
    if simulator_on:
        simulator_hint = "the simulator is on, so numpy arrays run the kernels instead"
    else:
        simulator_hint = "CARAFE_CUPY_SIMULATOR=1 runs the same kernels on numpy arrays on the CPU"
    cupy_error = _cupy_runtime.cupy_import_error()
    if cupy_error == "not installed":
        return (
            'unavailable: CuPy is not installed (pip install ".[cuda13]", or ".[cuda12]" on a '
            f"CUDA 12 driver); without a GPU, {simulator_hint}"
        )
    if cupy_error is not None:
        return f"unavailable: CuPy is installed but {cupy_error}; {simulator_hint}"
    cupy = _arrays.cupy_module()
    try:
        gpus = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # no driver, or it refuses
        gpus, reason = 0, f"{type(error).__name__}: {str(error).splitlines()[0]}"
    else:
        reason = "no device"
    if gpus < 1:
        return f"unavailable: CuPy is installed but sees no CUDA GPU ({reason}); {simulator_hint}"
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as error:
        return (
            f"unavailable: CuPy sees {gpus} GPU(s) but NVRTC cannot be loaded "
            f"({type(error).__name__}); install it with "
            'pip install ".[cuda13]" (or ".[cuda12]"), or a CUDA toolkit'
        )
    # e.g. NVRTC cannot target the GPU, cannot compile, or the driver refuses the binary
    reasons = [_cupy_runtime.gpu_kernels_unavailable_reason()]
    if reasons[0] is None:
        reasons = [_cupy_runtime.gpu_kernels_unavailable_reason(index) for index in range(gpus)]
    if None not in reasons:
        return f"unavailable: {reasons[0]}"
    return "cuda kernels"
