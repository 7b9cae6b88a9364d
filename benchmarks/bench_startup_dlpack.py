"""Two per-process and per-call costs, printed (nothing is asserted):

1. The first CPU call after ``import torch``: fresh interpreters time ``import
   torch``, ``import carafe_cupy``, the first and the second forward+backward,
   and report whether ``torch._dynamo`` (about 2.4 s to import) got loaded.
2. Handing tensors to the kernels: the raw pointer and strides the torch path
   reads today, against a DLPack exchange (``from_dlpack`` in, and the result
   back out), per call of three tensors. CPU tensors go through numpy's DLPack
   (what the simulator uses); with a GPU and CuPy, CUDA tensors through CuPy's.

    python benchmarks/bench_startup_dlpack.py [--runs 5] [--calls 20000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import timeit

FIRST_CALL = textwrap.dedent(
    """
    import json, sys, time
    started = time.perf_counter()
    import torch
    torch_imported = time.perf_counter()
    import carafe_cupy
    package_imported = time.perf_counter()
    features = torch.randn(1, 8, 16, 16, requires_grad=True)
    masks = torch.rand(1, 25, 32, 32, requires_grad=True)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        carafe_cupy.carafe(features, masks, 5, 1, 2).sum().backward()
        times.append(time.perf_counter() - start)
    print(json.dumps({
        "import torch": torch_imported - started,
        "import carafe_cupy": package_imported - torch_imported,
        "first call": times[0],
        "second call": times[1],
        "torch._dynamo loaded": "torch._dynamo" in sys.modules,
    }))
    """
)
DYNAMO_IMPORT = "import torch, time; t = time.perf_counter(); import torch._dynamo; " + (
    "print(time.perf_counter() - t)"
)


def first_call(runs: int) -> None:
    samples = [
        json.loads(subprocess.check_output([sys.executable, "-c", FIRST_CALL], text=True))
        for _ in range(runs)
    ]
    dynamo = [
        float(subprocess.check_output([sys.executable, "-c", DYNAMO_IMPORT], text=True))
        for _ in range(runs)
    ]
    print(f"first CPU call after import torch (median of {runs} fresh processes, fwd+bwd):")
    for key in ("import torch", "import carafe_cupy", "first call", "second call"):
        print(f"  {key:<20} {1000 * statistics.median(s[key] for s in samples):8.1f} ms")
    extra = statistics.median(s["first call"] - s["second call"] for s in samples)
    print(f"  {'first - second':<20} {1000 * extra:8.1f} ms   (target: first call <= 300 ms)")
    loaded = sorted({s["torch._dynamo loaded"] for s in samples})
    print(f"  torch._dynamo loaded by the calls: {loaded}")
    print(f"  (importing torch._dynamo alone: {1000 * statistics.median(dynamo):.0f} ms)")


def per_call(label: str, function, calls: int) -> float:
    seconds = min(timeit.repeat(function, number=calls, repeat=5)) / calls
    print(f"  {label:<52} {1e6 * seconds:8.2f} us")
    return seconds


def exchange(device: str, calls: int) -> None:
    import numpy as np
    import torch

    from carafe_cupy._array import refs as _arrays
    from carafe_cupy._torch import common as _torch_common

    tensors = [torch.randn(2, 16, 24, 24, device=device) for _ in range(3)]
    if device == "cpu":
        array_library = np
    else:
        array_library = _arrays.cupy_module()
    print(f"three {device} tensors to the kernels, per call ({array_library.__name__} DLPack):")
    raw = per_call(
        "raw pointers + strides (torch path)",
        lambda: [_torch_common.tensor_ref(t) for t in tensors],
        calls,
    )

    def dlpack_in():
        return [_arrays.array_ref(array_library.from_dlpack(t)) for t in tensors]

    out = array_library.from_dlpack(tensors[0])
    dlpack = per_call("from_dlpack + array_ref (inputs)", dlpack_in, calls)
    back = per_call("torch.from_dlpack (one result back)", lambda: torch.from_dlpack(out), calls)
    print(f"  DLPack costs {(dlpack + back) / raw:.1f}x the raw pointers on this path")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes for the first call")
    parser.add_argument("--calls", type=int, default=20000, help="calls per timing repeat")
    options = parser.parse_args()
    first_call(options.runs)
    exchange("cpu", options.calls)
    import torch

    from carafe_cupy._runtime import cupy_runtime as _cupy_runtime

    if torch.cuda.is_available() and _cupy_runtime.gpu_kernels_available():
        exchange("cuda", options.calls)
    else:
        print("no CUDA GPU with CuPy: the CUDA exchange was not measured")


if __name__ == "__main__":
    main()
