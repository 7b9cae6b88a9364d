"""What a user would run on the CPU instead of carafe_cupy, for ``bench --peers``.

- the shift-and-accumulate loop a user would write and hand to ``torch.compile``: nearest
  upsample the features, then one shifted multiply-add per kernel tap;
- the unfold port (``carafe_unfold_lowres`` of ``baselines.py``, the faster of the two
  ports copied through many repositories), eager and under ``torch.compile``.

All share the signature of ``carafe_cupy.carafe`` (features, masks, k, G, s) -> output.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from bench_cases import load_baselines

CarafeFn = Callable[[torch.Tensor, torch.Tensor, int, int, int], torch.Tensor]

# name -> what it is, in the report's words
PEER_LABELS = {
    "carafe_cupy": "carafe_cupy",
    "shift_compiled": "shift-and-accumulate loop under torch.compile",
    "unfold_compiled": "unfold port under torch.compile",
    "unfold_eager": "unfold port, eager",
}
COMPILED = ("shift_compiled", "unfold_compiled")


def carafe_shift_upsampled(
    features: torch.Tensor,
    masks: torch.Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
) -> torch.Tensor:
    """Nearest-upsample the features, pad by r*s, then add k*k shifted windows, each
    multiplied by its mask channel (broadcast over the channels of its group).

    Written without in-place updates, as one would for ``torch.compile``, which fuses the
    taps into one loop over the output.
    """
    k, g, s = kernel_size, group_size, scale_factor
    n, c, h, w = features.shape
    pad = (k - 1) // 2 * s
    ho, wo = h * s, w * s
    upsampled = F.interpolate(features, scale_factor=s, mode="nearest")
    padded = F.pad(upsampled, (pad, pad, pad, pad)).view(n, g, c // g, ho + 2 * pad, wo + 2 * pad)
    mask_taps = masks.view(n, g, k * k, 1, ho, wo)
    out = None
    for i in range(k):
        for j in range(k):
            window = padded[:, :, :, i * s : i * s + ho, j * s : j * s + wo]
            term = window * mask_taps[:, :, i * k + j]
            out = term if out is None else out + term
    return out.reshape(n, c, ho, wo)


def package_cpu_path() -> str:
    """Which path carafe_cupy takes for torch CPU tensors, in the words of ``info``."""
    try:
        from carafe_cupy._torch.common import backend_name

        return backend_name(torch.device("cpu"))
    except Exception as exc:  # an older or broken install: say so instead of failing
        return f"unknown ({type(exc).__name__}: {exc})"


def peers(compile_backend: str = "inductor") -> dict[str, CarafeFn]:
    """carafe_cupy and its CPU peers, by the names of ``PEER_LABELS``.

    The compiled peers compile on their first call (the benchmark's warm-up call) and
    again for each grad mode they meet (no_grad, then grad enabled). ``compile_backend``
    "eager" runs them through dynamo without generating code (the tests' quick run).
    """
    import carafe_cupy

    unfold = load_baselines().carafe_unfold_lowres
    return {
        "carafe_cupy": carafe_cupy.carafe,
        "shift_compiled": torch.compile(
            carafe_shift_upsampled, dynamic=False, backend=compile_backend
        ),
        "unfold_compiled": torch.compile(unfold, dynamic=False, backend=compile_backend),
        "unfold_eager": unfold,
    }


def carafe_flops(n: int, c: int, h: int, w: int, k: int, s: int, mode: str) -> int:
    """Floating-point operations of the op: a multiply and an add per tap, channel and output
    pixel forward; the backward does it twice more (grad_features, grad_masks)."""
    forward = 2 * n * c * (h * s) * (w * s) * k * k
    return 3 * forward if mode == "fwd+bwd" else forward


def sgemm_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """This machine's matrix-multiply rate at the current torch thread count: the best of
    ``repeats`` products of two ``size`` x ``size`` matrices, after one warm-up product."""
    import time

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return {"gflops": 2 * size**3 / best / 1e9, "size": size, "repeats": repeats}
