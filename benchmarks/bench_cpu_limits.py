"""The pure-PyTorch path at its limits: memory as the dilation grows, time as the
kernel outgrows the image. Prints, per case, the peak RSS growth of one forward +
backward (a child process per case, its high-water mark) and min / median / max
seconds of repeated calls.

    python benchmarks/bench_cpu_limits.py                      # the default cases
    python benchmarks/bench_cpu_limits.py --dilations 10000 --kernels 10001 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = """
import resource, sys, time
import torch, carafe_cupy

kind, value, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if kind == "dilation":  # reassemble(features 1x4x8x8, k = 3, dilation)
    shape, k, d = (1, 4, 8, 8), 3, value
else:  # carafe(features 1x1x1x1, k x k masks)
    shape, k, d = (1, 1, 1, 1), value, 1
features = torch.randn(*shape, requires_grad=True)
kernels = torch.rand(shape[0], k * k, *shape[2:], requires_grad=True)

def call():
    carafe_cupy.reassemble(features, kernels, k, 1, 1, 1, d).sum().backward()

warm = torch.randn(1, 1, 2, 2, requires_grad=True), torch.rand(1, 9, 2, 2, requires_grad=True)
carafe_cupy.reassemble(*warm, 3).sum().backward()  # loads everything before measuring
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(repeats):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(grown, *times)
"""


def measure(kind: str, value: int, repeats: int) -> tuple[int, list[float]]:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(value), str(repeats)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "CARAFE_CUPY_SIMULATOR": "0"},  # the PyTorch path
    )
    grown, *times = child.stdout.split()
    return int(grown), [float(each) for each in times]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dilations", type=int, nargs="*", default=[1, 100, 2000, 10000])
    parser.add_argument("--kernels", type=int, nargs="*", default=[3, 101, 1001])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print("| case | peak RSS growth | min s | median s | max s |")
    print("| --- | --- | --- | --- | --- |")
    cases = [("dilation", d) for d in args.dilations] + [("kernel", k) for k in args.kernels]
    for kind, value in cases:
        grown, times = measure(kind, value, args.repeats)
        label = (
            f"reassemble 1x4x8x8, k=3, dilation={value}"
            if kind == "dilation"
            else f"carafe 1x1x1x1, k={value}"
        )
        print(
            f"| {label} | {grown / 2**20:.1f} MiB | {min(times):.4f} | "
            f"{statistics.median(times):.4f} | {max(times):.4f} |"
        )


if __name__ == "__main__":
    main()
