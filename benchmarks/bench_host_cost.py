"""Host cost of a public call next to a bare ``torch.autograd.Function``.

Times, in one process and interleaved round by round, ``carafe_cupy.carafe``
forward (under ``torch.no_grad()``) and forward+backward (``torch.autograd.grad``)
against a bare Function that only allocates its outputs and reads their pointers
and strides, and prints min / median / max µs per call and the ratios.

No GPU is needed: the inputs are CPU tensors under ``CARAFE_CUPY_SIMULATOR=1``
(which sends them down the kernel path), and each launch goes to the CuPy runtime's
own code with a stand-in CuPy whose driver launch does nothing. Everything else a
GPU call does runs: the public checks, the dispatch, autograd, output allocation
(torch's CPU allocator standing in for its CUDA caching allocator), planning,
argument packing and the runtime's per-launch path. A GPU call also asks torch for
the current stream, which a CPU tensor skips; the size checks' device memory, which a
GPU call reads once (its total) and the host's would read from the system on every call,
is read once here too.

Times are the process's CPU time (other processes on a busy machine do not count)
per call, over batches of ``--calls`` calls; each round times every measurement
once, in a rotating order.

    python benchmarks/bench_host_cost.py                 # 52x84, fp32, k5 G1 s2, N2 C256
    python benchmarks/bench_host_cost.py --levels 13x21 52x84 --rounds 30
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

os.environ["CARAFE_CUPY_SIMULATOR"] = "1"  # CPU tensors take the kernel path
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_* modules beside this

import torch  # noqa: E402
from bench_cases import device_name, git_commit  # noqa: E402

import carafe_cupy  # noqa: E402
from carafe_cupy._runtime import cupy_runtime as _cupy_runtime  # noqa: E402
from carafe_cupy._runtime import launch as _launch  # noqa: E402

KERNEL_SIZE, GROUP_SIZE, SCALE = 5, 1, 2


class BareCarafe(torch.autograd.Function):
    """The least a launching Function does: allocate outputs, read pointers and strides."""

    @staticmethod
    def forward(ctx, features, masks, kernel_size, group_size, scale_factor):
        batch, channels, height, width = features.shape
        output = torch.empty(
            (batch, channels, height * scale_factor, width * scale_factor),
            dtype=features.dtype,
            device=features.device,
        )
        for tensor in (features, masks, output):
            tensor.data_ptr(), tensor.stride()
        ctx.save_for_backward(features, masks)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        features, masks = ctx.saved_tensors
        grad_features, grad_masks = torch.empty_like(features), torch.empty_like(masks)
        for tensor in (grad_output, features, masks, grad_features, grad_masks):
            tensor.data_ptr(), tensor.stride()
        return grad_features, grad_masks, None, None, None


def stand_in_cupy() -> SimpleNamespace:
    """The slice of CuPy the runtime's launch path touches, the driver launch a no-op."""

    class Device:  # cupy.cuda.Device as a context manager (the older runtime uses it)
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            return False

    return SimpleNamespace(
        cuda=SimpleNamespace(
            Device=Device,
            Stream=SimpleNamespace(from_external=lambda handle: contextlib.nullcontext()),
            runtime=SimpleNamespace(getDevice=lambda: 0, setDevice=lambda index: None),
            driver=SimpleNamespace(launchKernel=lambda *args: None),
        )
    )


class StubFunction:
    """A loaded kernel: ``ptr`` for a driver launch, a no-op call for CuPy's own."""

    ptr = 0

    def __call__(self, grid, block, args, shared_mem=0):
        return None


class StubKernels(dict):
    def __missing__(self, name):
        return StubFunction()

    def get(self, name, default=None):
        return self[name]


@contextlib.contextmanager
def driver_launch_stubbed():
    """Every launch runs the CuPy runtime's launch path on device 0, the stream 0,
    with a stand-in CuPy; kernels count as loaded, the driver launch does nothing.
    The launches of CPU tensors under the simulator are the ones redirected."""
    runtime = _cupy_runtime.CupyRuntime()

    kernels = StubKernels()

    class Modules(dict):
        def __missing__(self, key):
            return kernels

        def get(self, key, default=None):
            return self[key]

        def __contains__(self, key):
            return True

    runtime._modules = Modules()
    cupy = stand_in_cupy()
    patches = [mock.patch.object(_cupy_runtime, "_import_cupy", lambda: cupy)]
    if hasattr(_launch, "_SIMULATED"):  # the simulator's stand-in for the GPU runtime
        patches.append(mock.patch.object(_launch, "_SIMULATED", runtime))
    else:  # older launcher: the simulator's runtime is the one CPU tensors reach

        class ToCupy:
            def launch(self, module, source, kernel, grid, block, args, shared_mem=0):
                runtime.launch(module, source, kernel, grid, block, args, shared_mem, 0, 0)

        from carafe_cupy._sim import runtime as _sim_runtime

        to_cupy = ToCupy()
        patches.append(mock.patch.object(_sim_runtime, "get_runtime", lambda: to_cupy))
    try:  # the size checks' device memory: a GPU's total is read once and kept, the
        # host's (the CPU stand-in here) read afresh each call, cgroup files and all
        from carafe_cupy._core import limits as _limits
    except ImportError:  # a tree from before the size checks
        _limits = None
    if _limits is not None:
        host_memory = _limits.host_memory_bytes()
        patches.append(mock.patch.object(_limits, "host_memory_bytes", lambda: host_memory))
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield runtime


def per_call_us(call, calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - start) / calls * 1e6


def measurements(height: int, width: int, dtype: torch.dtype, batch: int, channels: int):
    masks_channels = GROUP_SIZE * KERNEL_SIZE**2
    features = torch.zeros((batch, channels, height, width), dtype=dtype, requires_grad=True)
    masks = torch.zeros(
        (batch, masks_channels, height * SCALE, width * SCALE), dtype=dtype, requires_grad=True
    )
    grad = torch.zeros((batch, channels, height * SCALE, width * SCALE), dtype=dtype)
    params = (KERNEL_SIZE, GROUP_SIZE, SCALE)

    def ours_forward():
        with torch.no_grad():
            return carafe_cupy.carafe(features, masks, *params)

    def bare_forward():
        with torch.no_grad():
            return BareCarafe.apply(features, masks, *params)

    def ours_forward_backward():
        return torch.autograd.grad(
            carafe_cupy.carafe(features, masks, *params), (features, masks), grad
        )

    def bare_forward_backward():
        return torch.autograd.grad(
            BareCarafe.apply(features, masks, *params), (features, masks), grad
        )

    return {
        "carafe forward": ours_forward,
        "bare Function forward": bare_forward,
        "carafe forward+backward": ours_forward_backward,
        "bare Function forward+backward": bare_forward_backward,
    }


def run_level(height, width, dtype, batch, channels, rounds, calls) -> list[str]:
    timed = measurements(height, width, dtype, batch, channels)
    samples = {name: [] for name in timed}
    names = list(timed)
    for call in timed.values():  # first calls plan and warm caches
        for _ in range(3):
            call()
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(per_call_us(timed[name], calls))
    lines = [
        f"## {batch}x{channels}x{height}x{width} {str(dtype).removeprefix('torch.')}, "
        f"k{KERNEL_SIZE} G{GROUP_SIZE} s{SCALE}: µs per call ({rounds} rounds of {calls})",
        "",
        "| call | min | median | max |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in names:
        values = samples[name]
        lines.append(
            f"| {name} | {min(values):.1f} | {statistics.median(values):.1f} | {max(values):.1f} |"
        )
    lines += ["", "| ratio carafe / bare | of mins | of medians | per round: min, median, max |"]
    lines.append("| --- | ---: | ---: | --- |")
    for what in ("forward", "forward+backward"):
        ours, bare = samples[f"carafe {what}"], samples[f"bare Function {what}"]
        paired = [a / b for a, b in zip(ours, bare, strict=True)]
        lines.append(
            f"| {what} | {min(ours) / min(bare):.2f} | "
            f"{statistics.median(ours) / statistics.median(bare):.2f} | "
            f"{min(paired):.2f}, {statistics.median(paired):.2f}, {max(paired):.2f} |"
        )
    return lines + [""]


def header(argv: list[str]) -> list[str]:
    root = Path(carafe_cupy.__file__).resolve().parent.parent
    return [
        "# Host cost of a public call (CPU, driver launch stubbed)",
        "",
        f"- command: `{' '.join(['python benchmarks/bench_host_cost.py', *argv])}`",
        f"- commit: {git_commit()}; package at {root}",
        f"- machine: {device_name('cpu')}, {os.cpu_count()} CPUs, load average "
        f"{', '.join(f'{value:.2f}' for value in os.getloadavg())} at the start",
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s)",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", nargs="+", default=["52x84"], help="HxW of the features")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=200, help="calls per timed batch")
    options = parser.parse_args(argv)
    torch.set_num_threads(1)  # CPU time of this thread only
    lines = header(argv)
    with driver_launch_stubbed():
        for level in options.levels:
            height, width = (int(size) for size in level.split("x"))
            lines += run_level(
                height,
                width,
                getattr(torch, options.dtype),
                options.batch,
                options.channels,
                options.rounds,
                options.calls,
            )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
