"""Checks made before the first kernel compile on a device, and the target it gets.

- NVRTC's target range: NVRTC 13 no longer compiles for sm_70 (V100) and older,
  so on such a GPU the kernels cannot be built with the ``cuda13`` extra. A GPU
  newer than NVRTC (sm_120 with NVRTC 12.4) gets PTX for the newest architecture
  NVRTC knows, which the driver compiles for the GPU when the module is loaded.
- CUDA graph capture: compiling and loading a module is not allowed while the
  stream is being captured, so a kernel must be compiled by a call before it.

Nothing here imports CuPy: ``cupy_runtime`` (the one module that does) passes the
``cupy`` module in, which also lets the tests hand in a fake one.
"""

from __future__ import annotations

from typing import Any

from .._core.errors import KernelsUnavailableError, install_hint
from .binaries import Target

# The oldest architecture each NVRTC major version compiles for, and the newest
# per (major, minor) from that minor on, for CuPy builds without
# nvrtc.getSupportedArchs().
_OLDEST_ARCH_BY_NVRTC_MAJOR = {11: 35, 12: 50, 13: 75}
_NEWEST_ARCH_FROM_NVRTC = {(12, 0): 90, (12, 8): 120, (12, 9): 121}
_STREAM_CAPTURE_STATUS_NONE = 0


class KernelNotReadyForCaptureError(RuntimeError):
    """A kernel's first use would be inside a CUDA graph capture."""


def nvrtc_version(cupy: Any) -> tuple[int, int]:
    major, minor = cupy.cuda.nvrtc.getVersion()
    return int(major), int(minor)


def oldest_nvrtc_arch(cupy: Any) -> int:
    """The oldest ``sm_XY`` (as XY) the loaded NVRTC can compile for."""
    supported = getattr(cupy.cuda.nvrtc, "getSupportedArchs", None)
    if supported is not None:
        archs = [int(arch) for arch in supported()]
        if archs:
            return min(archs)
    major, _ = nvrtc_version(cupy)
    if major in _OLDEST_ARCH_BY_NVRTC_MAJOR:
        return _OLDEST_ARCH_BY_NVRTC_MAJOR[major]
    return _OLDEST_ARCH_BY_NVRTC_MAJOR[max(_OLDEST_ARCH_BY_NVRTC_MAJOR)]


def compute_capability(cupy: Any, device: int) -> int:
    """The device's compute capability as XY (70 for a V100)."""
    return int(cupy.cuda.Device(device).compute_capability)


def supported_archs(cupy: Any) -> tuple[int, ...]:
    """Every ``sm_XY`` (as XY) the loaded NVRTC compiles for, ascending."""
    supported = getattr(cupy.cuda.nvrtc, "getSupportedArchs", None)
    archs = sorted(int(arch) for arch in supported()) if supported is not None else []
    if archs:
        return tuple(archs)
    version = nvrtc_version(cupy)
    newest = max(
        (arch for since, arch in _NEWEST_ARCH_FROM_NVRTC.items() if since <= version),
        default=min(_NEWEST_ARCH_FROM_NVRTC.values()),
    )
    known = (50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90, 100, 120, 121)
    return tuple(arch for arch in known if oldest_nvrtc_arch(cupy) <= arch <= newest)


def compile_target(cupy: Any, device: int) -> Target:
    """What the kernels are compiled for on ``device``.

    A cubin for the GPU's own architecture where NVRTC knows it; else a cubin
    for the first architecture of its major (sm_120 for sm_121: a cubin runs on
    later minor versions of its major); else, for a GPU newer than NVRTC, PTX
    for the newest architecture NVRTC knows, compiled by the driver when
    loaded. Raises KernelsUnavailableError for a GPU older than NVRTC's range.
    """
    reason = untargetable_reason(cupy, device)
    if reason is not None:
        raise KernelsUnavailableError(f"carafe_cupy: {reason}.")
    capability = compute_capability(cupy, device)
    archs = supported_archs(cupy)
    if capability in archs:
        return Target(capability)
    if capability // 10 * 10 in archs:
        return Target(capability // 10 * 10)
    return Target(max(arch for arch in archs if arch < capability), ptx=True)


def untargetable_reason(cupy: Any, device: int) -> str | None:
    """Why NVRTC cannot build kernels for ``device``, or None when it can.

    Only GPUs older than NVRTC's range are refused: a newer one gets PTX
    (:func:`compile_target`), and whether its driver can load that is found by
    loading a test kernel (``cupy_runtime.gpu_kernels_unavailable_reason``).
    """
    capability = compute_capability(cupy, device)
    oldest = oldest_nvrtc_arch(cupy)
    if capability >= oldest:
        return None
    major, minor = nvrtc_version(cupy)
    return (
        f"NVRTC {major}.{minor} cannot compile for cuda:{device} (sm_{capability}): the oldest "
        f"GPU it targets is sm_{oldest}. Install the CUDA 12 kernels instead, "
        f"{install_hint('cuda12')} (NVRTC 12 targets sm_50 and newer)"
    )


def check_before_first_compile(cupy: Any, device: int, stream: int, kernel_name: str) -> None:
    """Raise a clear error where compiling ``kernel_name`` now cannot work."""
    reason = untargetable_reason(cupy, device)
    if reason is not None:
        raise KernelsUnavailableError(f"carafe_cupy: {reason}.")
    # the legacy default stream (0) cannot be captured
    if stream != 0 and cupy.cuda.runtime.streamIsCapturing(stream) != _STREAM_CAPTURE_STATUS_NONE:
        raise KernelNotReadyForCaptureError(
            f"carafe_cupy: kernel {kernel_name!r} is not compiled yet on cuda:{device}, and the "
            "stream is being captured into a CUDA graph, where a kernel cannot be compiled or "
            "loaded. Run one call with the same dtype, kernel size and device before capturing "
            "(a warm-up iteration, as torch.cuda.graph recommends); torch.compile's "
            'mode="reduce-overhead" does that warm-up by itself.'
        )
