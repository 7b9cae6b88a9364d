"""Where the compiled CPU forward's time goes at the FPN shape (N=2, C=256, 52x84 ->
104x168, k5 G1 s2, fp32), interleaved call by call in one process:

- "forward": ``jit_dispatch.forward`` as it runs (a fresh result, faulted in by all
  the threads over their own stretches of huge pages, then the kernels);
- "no first touch": the same with the first-touch pass switched off (the kernels'
  first writes fault the pages in);
- "kernels only": the kernels' work items into one result allocated (and faulted
  in) once, so no page faults and no allocation: what the threads cost alone.

Wall and CPU milliseconds (CPU: all the process's threads), min / median / max, and
the load average before and after.

    python benchmarks/cpu_forward_pages.py --threads 2 --reps 21 [--out DIR]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=21)
    parser.add_argument("--out", type=Path, default=None, help="write results.md here")
    args = parser.parse_args(argv)
    os.environ["CARAFE_CUPY_CPU_KERNEL"] = "numba"
    torch.set_num_threads(args.threads)
    from carafe_cupy._cpu import jit_dispatch, jit_forward, pages

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 256, 52, 84, generator=generator)
    masks = torch.rand(2, 25, 104, 168, generator=generator)
    params = (5, 1, 2, 1, 1)
    reused = torch.empty(2, 256, 104, 168)
    flats = [jit_dispatch._flat(t) for t in (features, masks, reused)]
    kernel_args = (*(f for f, _ in flats), *(s for _, s in flats),
                   jit_dispatch._dims(features, params))
    items = jit_dispatch._items(2, 1, 52)
    touch_ranges = pages.first_touch_ranges

    def forward() -> None:
        pages.first_touch_ranges = touch_ranges
        jit_dispatch.forward(features, masks, params, torch.contiguous_format)

    def no_first_touch() -> None:
        pages.first_touch_ranges = lambda tensor, parts: []
        try:
            jit_dispatch.forward(features, masks, params, torch.contiguous_format)
        finally:
            pages.first_touch_ranges = touch_ranges

    def kernels_only() -> None:
        jit_dispatch._run(jit_forward.forward, kernel_args, items)

    variants = {"forward": forward, "no first touch": no_first_touch,
                "kernels only": kernels_only}
    for call in variants.values():  # compile or load, and warm up
        call()
        call()
    load_before = os.getloadavg()[0]
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []}
                                                for name in variants}
    for _ in range(args.reps):
        for name, call in variants.items():
            cpu, wall = time.process_time(), time.perf_counter()
            call()
            times[name]["wall"].append((time.perf_counter() - wall) * 1e3)
            times[name]["cpu"].append((time.process_time() - cpu) * 1e3)
    load_after = os.getloadavg()[0]
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    lines = [f"`{command}`", "",
             f"threads {args.threads}, {args.reps} interleaved rounds, load average "
             f"{load_before:.1f} -> {load_after:.1f}; ms min / median / max", "",
             "| variant | wall ms | CPU ms |", "|---|---|---|"]
    for name in variants:
        cells = []
        for kind in ("wall", "cpu"):
            values = times[name][kind]
            cells.append(f"{min(values):.2f} / {statistics.median(values):.2f} / "
                         f"{max(values):.2f}")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"results-{args.threads}-threads.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
