"""CARAFE from CuPy alone, with no PyTorch anywhere.

The masks are computed with array operations (a linear map of the features to
k*k logits per output pixel, then a softmax over the taps), CARAFE runs on cupy
arrays, its gradients come from ``carafe_cupy.carafe_backward``, and a few steps
of plain gradient descent fit the mask predictor, all on a stream this script
creates (not CuPy's default stream). CUDA events recorded on that stream time
the work, and only that stream is synchronized.

    python examples/cupy_pipeline.py
    python examples/cupy_pipeline.py --with-torch   # also torch <-> CuPy round trips (DLPack)
    CARAFE_CUPY_SIMULATOR=1 python examples/cupy_pipeline.py   # no GPU or no CuPy needed

On a CUDA GPU it needs CuPy and NVRTC, installed from the repository with
``pip install ".[cuda13]"`` (or ``".[cuda12]"`` on a CUDA 12 driver). Without a
GPU, or without CuPy, ``CARAFE_CUPY_SIMULATOR=1`` runs the same CUDA kernels on
the CPU through carafe_cupy's kernel simulator: numpy arrays instead of cupy
arrays, no streams, and the time taken from the host's clock.

Exit status: 0 when the pipeline ran and its checks passed, 1 when a check
failed, 2 when it cannot run here (no CuPy or no CUDA GPU, and the simulator is
not switched on) or the command line is wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import carafe_cupy
import carafe_cupy.arrays

EXIT_CANNOT_RUN = 2
KERNEL_SIZE, GROUP_SIZE, SCALE_FACTOR = 5, 2, 2
BATCH, CHANNELS, HEIGHT, WIDTH = 2, 16, 24, 24
FIT_STEPS, LEARNING_RATE = 30, 50.0


@dataclass
class ArrayBackend:
    """The array module and how work is ordered and timed on it."""

    name: str
    xp: ModuleType
    run_on_stream: Callable[[], contextlib.AbstractContextManager]
    elapsed_ms: Callable[[], float]


class CannotRunHere(Exception):
    pass


def simulator_requested() -> bool:
    return os.environ.get("CARAFE_CUPY_SIMULATOR", "") not in ("", "0")


def choose_backend() -> ArrayBackend:
    if simulator_requested():
        if importlib.util.find_spec("carafe_cupy._sim") is None:
            raise CannotRunHere(
                "CARAFE_CUPY_SIMULATOR=1 is set, but this carafe_cupy has no CPU simulator "
                "of the kernels; run on a machine with a CUDA GPU instead."
            )
        import numpy

        return _numpy_backend(numpy)
    try:
        import cupy
    except ImportError as error:
        raise CannotRunHere(
            f"CuPy is not installed ({error}). On a CUDA GPU, install it from the repository "
            'with pip install ".[cuda13]" (or ".[cuda12]" on a CUDA 12 driver). Without a GPU '
            "or CuPy, CARAFE_CUPY_SIMULATOR=1 runs the same kernels on numpy arrays on the CPU "
            "(carafe_cupy's kernel simulator): "
            "CARAFE_CUPY_SIMULATOR=1 python examples/cupy_pipeline.py"
        ) from error
    try:
        gpus = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:
        gpus = 0
    if gpus < 1:
        raise CannotRunHere(
            "no CUDA GPU: this pipeline runs CARAFE's CUDA kernels on cupy arrays. On a "
            "machine without a GPU, run it with CARAFE_CUPY_SIMULATOR=1 to use carafe_cupy's "
            "CPU simulator of the kernels, where the installed carafe_cupy has it."
        )
    return _cupy_backend(cupy)


def _cupy_backend(cupy: ModuleType) -> ArrayBackend:
    stream = cupy.cuda.Stream(non_blocking=True)
    start, end = cupy.cuda.Event(), cupy.cuda.Event()

    @contextlib.contextmanager
    def run_on_stream() -> Iterator[None]:
        with stream:
            # carafe_cupy launches on CuPy's current stream, which is now ours.
            current = cupy.cuda.get_current_stream()
            if current.ptr != stream.ptr:
                raise RuntimeError("the pipeline's stream is not CuPy's current stream")
            start.record(stream)
            yield
            end.record(stream)
        print(f"queued on stream {hex(stream.ptr)} (not the default stream: {stream.ptr != 0})")
        stream.synchronize()  # wait for this stream only

    def elapsed_ms() -> float:
        return cupy.cuda.get_elapsed_time(start, end)

    return ArrayBackend("cupy (CUDA GPU)", cupy, run_on_stream, elapsed_ms)


def _numpy_backend(numpy: ModuleType) -> ArrayBackend:
    times: list[float] = []

    @contextlib.contextmanager
    def run_on_stream() -> Iterator[None]:
        started = time.perf_counter()
        yield
        times.append(time.perf_counter() - started)

    return ArrayBackend("numpy (CPU simulator)", numpy, run_on_stream, lambda: 1000 * times[-1])


# ---------------------------------------------------------------- the pipeline


def softmax_over_taps(logits: Any, xp: ModuleType) -> Any:
    """(N, G*k*k, H, W) logits -> masks, normalised over each group's k*k taps."""
    batch, channels, height, width = logits.shape
    taps = KERNEL_SIZE * KERNEL_SIZE
    grouped = logits.reshape(batch, channels // taps, taps, height, width)
    weights = xp.exp(grouped - grouped.max(axis=2, keepdims=True))
    return (weights / weights.sum(axis=2, keepdims=True)).reshape(logits.shape)


def softmax_backward(masks: Any, grad_masks: Any) -> Any:
    """Gradient of the logits, given the masks and the gradient of the masks."""
    batch, channels, height, width = masks.shape
    taps = KERNEL_SIZE * KERNEL_SIZE
    shape = (batch, channels // taps, taps, height, width)
    m, g = masks.reshape(shape), grad_masks.reshape(shape)
    return (m * (g - (m * g).sum(axis=2, keepdims=True))).reshape(masks.shape)


def spread_sub_pixels(per_input_pixel: Any) -> Any:
    """(N, M*s*s, H, W) -> (N, M, H*s, W*s): one value per output pixel (pixel shuffle)."""
    batch, channels, height, width = per_input_pixel.shape
    s = SCALE_FACTOR
    out_channels = channels // (s * s)
    shuffled = per_input_pixel.reshape(batch, out_channels, s, s, height, width)
    return shuffled.transpose(0, 1, 4, 2, 5, 3).reshape(batch, out_channels, height * s, width * s)


def gather_sub_pixels(per_output_pixel: Any) -> Any:
    """The inverse of :func:`spread_sub_pixels` (and its gradient)."""
    batch, channels, out_height, out_width = per_output_pixel.shape
    s = SCALE_FACTOR
    height, width = out_height // s, out_width // s
    unshuffled = per_output_pixel.reshape(batch, channels, height, s, width, s)
    return unshuffled.transpose(0, 1, 3, 5, 2, 4).reshape(batch, channels * s * s, height, width)


def predict_masks(features: Any, weight: Any, bias: Any, xp: ModuleType) -> tuple[Any, Any]:
    """Logits from a per-pixel linear map of the features; returns (masks, logits)."""
    per_pixel = xp.einsum("oc,nchw->nohw", weight, features) + bias[None, :, None, None]
    logits = spread_sub_pixels(per_pixel)
    return softmax_over_taps(logits, xp), logits


def loss_and_grads(
    features: Any, target: Any, weight: Any, bias: Any, xp: ModuleType
) -> tuple[float, Any, Any, Any]:
    """0.5 * ||carafe(features, masks) - target||^2 and its gradients (weight, bias, features)."""
    masks, _ = predict_masks(features, weight, bias, xp)
    output = carafe_cupy.carafe(features, masks, KERNEL_SIZE, GROUP_SIZE, SCALE_FACTOR)
    residual = output - target
    grad_features, grad_masks = carafe_cupy.carafe_backward(
        residual, features, masks, KERNEL_SIZE, GROUP_SIZE, SCALE_FACTOR
    )
    grad_per_pixel = gather_sub_pixels(softmax_backward(masks, grad_masks))
    grad_weight = xp.einsum("nohw,nchw->oc", grad_per_pixel, features)
    grad_bias = grad_per_pixel.sum(axis=(0, 2, 3))
    loss = 0.5 * float((residual * residual).sum())
    return loss, grad_weight, grad_bias, grad_features


def run_pipeline(backend: ArrayBackend) -> bool:
    xp = backend.xp
    rng = xp.random.RandomState(0)
    features = rng.standard_normal((BATCH, CHANNELS, HEIGHT, WIDTH))  # float64 for the checks
    # Target: nearest-neighbour upsampling, which CARAFE reproduces with a one-hot
    # centre tap; the mask predictor has to learn that from uniform kernels.
    target = features.repeat(SCALE_FACTOR, axis=2).repeat(SCALE_FACTOR, axis=3)
    logit_channels = GROUP_SIZE * KERNEL_SIZE * KERNEL_SIZE * SCALE_FACTOR * SCALE_FACTOR
    weight = 0.01 * rng.standard_normal((logit_channels, CHANNELS))
    bias = xp.zeros(logit_channels)

    checks_passed = True
    with backend.run_on_stream():
        # The analytic gradient of the weight against a central difference.
        direction = rng.standard_normal(weight.shape)
        loss, grad_weight, _, grad_features = loss_and_grads(features, target, weight, bias, xp)
        step = 1e-5
        loss_plus = loss_and_grads(features, target, weight + step * direction, bias, xp)[0]
        loss_minus = loss_and_grads(features, target, weight - step * direction, bias, xp)[0]
        numeric = (loss_plus - loss_minus) / (2 * step)
        analytic = float((grad_weight * direction).sum())
        gradient_error = abs(numeric - analytic) / max(1.0, abs(numeric))
        losses = [loss]
        for _ in range(FIT_STEPS):
            loss, grad_weight, grad_bias, _ = loss_and_grads(features, target, weight, bias, xp)
            weight -= LEARNING_RATE * grad_weight / target.size
            bias -= LEARNING_RATE * grad_bias / target.size
            losses.append(loss)
        masks, _ = predict_masks(features, weight, bias, xp)
        centre_weight = float(
            masks.reshape(BATCH, GROUP_SIZE, KERNEL_SIZE**2, -1)[:, :, KERNEL_SIZE**2 // 2].mean()
        )

    print(f"backend: {backend.name}")
    print(
        f"features {features.shape}, masks {masks.shape}, "
        f"k={KERNEL_SIZE} G={GROUP_SIZE} s={SCALE_FACTOR}, {features.dtype}"
    )
    print(
        f"grad_features {grad_features.shape}, "
        f"largest magnitude {float(abs(grad_features).max()):.3g}"
    )
    print(
        f"directional derivative of the loss: carafe_backward {analytic:.6g}, "
        f"central difference {numeric:.6g}, relative error {gradient_error:.1e}"
    )
    if not gradient_error < 1e-6:
        print("FAILED: carafe_backward disagrees with the central difference")
        checks_passed = False
    print(
        f"fitting the mask predictor for {FIT_STEPS} steps: "
        f"loss {losses[0]:.4g} -> {losses[-1]:.4g}, "
        f"mean weight of the centre tap {centre_weight:.2f} (uniform {1 / KERNEL_SIZE**2:.2f})"
    )
    if not losses[-1] < losses[0]:
        print("FAILED: gradient descent through carafe_backward did not lower the loss")
        checks_passed = False
    print(f"time on the stream: {backend.elapsed_ms():.2f} ms")
    print(f"torch imported: {'yes' if 'torch' in sys.modules else 'no'}")
    return checks_passed


# ---------------------------------------------------------------- torch <-> CuPy


def same_memory(array: Any, tensor: Any) -> bool:
    pointer = array.ctypes.data if hasattr(array, "ctypes") else array.data.ptr
    return pointer == tensor.data_ptr()


def torch_round_trips(backend: ArrayBackend) -> bool:
    """CuPy arrays into torch and back through DLPack, zero-copy, both ways.

    Each library hands the other its current stream when it takes an array
    (the DLPack stream protocol), so work queued on CuPy's stream is ordered
    before torch's use of the array, and the other way round.
    """
    import torch

    xp = backend.xp
    rng = xp.random.RandomState(1)
    shape = (1, 2 * GROUP_SIZE, 6, 6)
    features = rng.standard_normal(shape).astype(xp.float32)
    logits = rng.standard_normal(
        (1, GROUP_SIZE * KERNEL_SIZE**2, 6 * SCALE_FACTOR, 6 * SCALE_FACTOR)
    )
    masks = softmax_over_taps(logits, xp).astype(xp.float32)
    params = (KERNEL_SIZE, GROUP_SIZE, SCALE_FACTOR)
    with backend.run_on_stream():
        expected = carafe_cupy.carafe(features, masks, *params)
        # CuPy -> torch: the torch front end, with autograd
        features_torch = torch.from_dlpack(features).requires_grad_()
        masks_torch = torch.from_dlpack(masks)
        output_torch = carafe_cupy.carafe(features_torch, masks_torch, *params)
        output_torch.backward(torch.ones_like(output_torch))
        # torch -> CuPy: the result, without a copy
        output = xp.from_dlpack(output_torch.detach())
        # torch tensors through the array front end: torch in, torch out
        through_arrays = carafe_cupy.arrays.carafe(features_torch.detach(), masks_torch, *params)
        grad_features, _ = carafe_cupy.carafe_backward(
            xp.ones_like(expected), features, masks, *params
        )
    checks = {
        "torch.from_dlpack shares the cupy array's memory": same_memory(features, features_torch),
        "cupy.from_dlpack shares the torch tensor's memory": same_memory(output, output_torch),
        "torch path == CuPy path": float(abs(output - expected).max()) < 1e-5,
        "array front end returns torch": isinstance(through_arrays, torch.Tensor),
        "array front end on torch == CuPy path": float(
            abs(xp.from_dlpack(through_arrays) - expected).max()
        )
        < 1e-5,
        "torch autograd == carafe_backward": float(
            abs(xp.from_dlpack(features_torch.grad) - grad_features).max()
        )
        < 1e-5,
    }
    for name, passed in checks.items():
        print(f"torch round trip: {name}: {'ok' if passed else 'FAILED'}")
    return all(checks.values())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python examples/cupy_pipeline.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--with-torch",
        action="store_true",
        help="also pass the arrays to torch and back through DLPack, without copies "
        "(needs PyTorch)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        backend = choose_backend()
    except CannotRunHere as reason:
        print(f"cupy_pipeline: {reason}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    passed = run_pipeline(backend)
    if args.with_torch:
        passed = torch_round_trips(backend) and passed
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
