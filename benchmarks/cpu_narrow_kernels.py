"""The two compiled CPU forwards alone, on the involution and CARAFE++ shapes of
``bench_reassembly.py`` (fp32, the kernels' work items on one thread, no op, no
allocation): ``jit_forward`` (16 output columns x 8 channels in the vector
registers) against ``jit_narrow`` (8 output pixels x 16 channels), interleaved,
CPU time of the calling thread in ms, min / median / max, and which one the
dispatcher picks. A view of the kernels that the op's fixed costs do not blur.

    python benchmarks/cpu_narrow_kernels.py --reps 25 [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

# (name, C, H, W, k, G, s, t) at N = 2; the last two rows are FPN levels of CARAFE (s = 2)
SHAPES = (
    ("inv-c64-56-s1", 64, 56, 56, 7, 4, 1, 1),
    ("inv-c128-56-s2", 128, 56, 56, 7, 8, 1, 2),
    ("inv-c128-28-s1", 128, 28, 28, 7, 8, 1, 1),
    ("inv-c256-28-s2", 256, 28, 28, 7, 16, 1, 2),
    ("inv-c256-14-s1", 256, 14, 14, 7, 16, 1, 1),
    ("inv-c512-14-s2", 512, 14, 14, 7, 32, 1, 2),
    ("inv-c512-7-s1", 512, 7, 7, 7, 32, 1, 1),
    ("down-c256-64-s2", 256, 64, 64, 5, 1, 1, 2),
    ("fpn-13x21-s2", 256, 13, 21, 5, 1, 2, 1),
    ("fpn-52x84-s2", 256, 52, 84, 5, 1, 2, 1),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--out", type=Path, default=None, help="write results.md here")
    args = parser.parse_args(argv)
    os.environ["CARAFE_CUPY_CPU_KERNEL"] = "numba"
    torch.set_num_threads(1)
    from carafe_cupy._cpu import jit_dispatch, jit_forward, jit_narrow

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    lines = [f"`{command}`", "", "CPU ms of the calling thread, min / median / max", "",
             "| shape | load | jit_forward | jit_narrow | forward / narrow (min) | picked |",
             "|---|---|---|---|---:|---|"]
    print("\n".join(lines), flush=True)
    for name, channels, height, width, k, groups, scale, stride in SHAPES:
        generator = torch.Generator().manual_seed(0)
        features = torch.randn(2, channels, height, width, generator=generator)
        rows, cols = -(-height // stride), -(-width // stride)
        masks = torch.randn(2, groups * k * k, rows * scale, cols * scale, generator=generator)
        out = torch.empty(2, channels, rows * scale, cols * scale)
        params = (k, groups, scale, stride, 1)
        flats = [jit_dispatch._flat(t) for t in (features, masks, out)]
        kernel_args = (*(f for f, _ in flats), *(s for _, s in flats),
                       jit_dispatch._dims(features, params))
        runs = {
            "jit_forward": (jit_forward.forward, jit_dispatch._items(2, groups, rows)),
            "jit_narrow": (jit_narrow.forward, jit_dispatch._group_items(2, groups, rows, k)),
        }
        times: dict[str, list[float]] = {kernel: [] for kernel in runs}
        load = os.getloadavg()[0]
        for round_ in range(args.reps + 1):
            for kernel, (function, items) in runs.items():
                start = time.thread_time()
                for item in items:
                    function(*kernel_args, *item)
                if round_:  # the first round compiles and warms up
                    times[kernel].append((time.thread_time() - start) * 1e3)
        cells = ["/".join(f"{v:.3f}" for v in (min(t), statistics.median(t), max(t)))
                 for t in times.values()]
        ratio = min(times["jit_forward"]) / min(times["jit_narrow"])
        picked = ("jit_narrow" if jit_dispatch._narrow_suits(channels // groups, cols, scale)
                  else "jit_forward")
        line = f"| {name} | {load:.1f} | {cells[0]} | {cells[1]} | {ratio:.2f} | {picked} |"
        print(line, flush=True)
        lines.append(line)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "kernels.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
