"""The two CPU paths side by side: the kernels compiled by Numba and the pure-PyTorch
path, forward (no grad) and forward+backward, min / median / max of interleaved rounds
after a warm-up, their peak extra memory, and the compiled kernels' first-call cost
from an empty cache and from the disk cache (each in a fresh process).

    python benchmarks/cpu_kernels.py                       # N=2, C=256, 52x84 -> 104x168, k5 G1 s2
    python benchmarks/cpu_kernels.py --shape 2,64,32,32 --k 3 --groups 4 --reps 9 --threads 1
    python benchmarks/cpu_kernels.py --reps 1 --no-memory --first-call-reps 5   # first calls
    # first calls of this tree and of another (a worktree of an older commit), interleaved
    python benchmarks/cpu_kernels.py --reps 1 --no-memory --first-call-tree ../old
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PATHS = ("numba", "torch")
VARIABLE = "CARAFE_CUPY_CPU_KERNEL"
ROOT = Path(__file__).resolve().parents[1]


def _inputs(torch, config):
    n, c, h, w, k, g, s = config
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(n, c, h, w, generator=generator)
    masks = torch.rand(n, g * k * k, h * s, w * s, generator=generator)
    return features, masks


def _step(torch, carafe_cupy, config, mode):
    k, g, s = config[4:]
    features, masks = _inputs(torch, config)
    if mode == "forward":

        def forward():
            with torch.no_grad():
                return carafe_cupy.carafe(features, masks, k, g, s)

        return forward
    features.requires_grad_()
    masks.requires_grad_()

    def forward_backward():
        out = carafe_cupy.carafe(features, masks, k, g, s)
        out.backward(torch.ones_like(out))
        features.grad = masks.grad = None

    return forward_backward


def timings(config, reps: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU milliseconds per call (CPU: all of the process's threads), rounds
    interleaved between the paths so both see the same machine load."""
    import torch

    import carafe_cupy

    steps = {(path, mode): _step(torch, carafe_cupy, config, mode)
             for path in PATHS for mode in ("forward", "forward+backward")}
    times: dict[str, list[float]] = {f"{path} {mode}": [] for path, mode in steps}
    cpu: dict[str, list[float]] = {name: [] for name in times}
    for round_ in range(reps + 1):  # round 0 warms up (and compiles)
        for (path, mode), step in steps.items():
            os.environ[VARIABLE] = path
            started, cpu_started = time.perf_counter(), time.process_time()
            step()
            if round_:
                times[f"{path} {mode}"].append((time.perf_counter() - started) * 1e3)
                cpu[f"{path} {mode}"].append((time.process_time() - cpu_started) * 1e3)
    return times, cpu


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def memory_child(config) -> dict[str, float]:
    """In a fresh process: peak RSS above the inputs for one call of each path and mode,
    and what each call must hold anyway (the output, plus the gradients)."""
    import torch

    import carafe_cupy

    result = {}
    for path in PATHS:
        os.environ[VARIABLE] = path
        for mode in ("forward", "forward+backward"):
            step = _step(torch, carafe_cupy, config, mode)
            step()  # compiled and warmed, so only the call itself is measured
            Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
            base = _kib("VmRSS")
            step()
            result[f"{path} {mode}"] = (_kib("VmHWM") - base) / 1024
    n, c, h, w, k, g, s = config
    output = n * c * h * w * s * s * 4 / 2**20
    result["compulsory forward"] = output
    # the output, its gradient, and the gradients of both inputs
    gradients = (n * c * h * w + n * g * k * k * h * w * s * s) * 4 / 2**20
    result["compulsory forward+backward"] = 2 * output + gradients
    return result


# One fresh process per measurement. It prints wall and CPU seconds (CPU: all of the
# process's threads) for each step: importing numba and the kernels, the first forward,
# then the first backward, or a whole training step (forward on inputs that require grad
# and .backward()), as the steps argument says.
FIRST_CALL = """
import sys, time
import torch, carafe_cupy
from carafe_cupy._cpu import jit_dispatch
steps, pause = sys.argv[1], float(sys.argv[2])
features, masks = torch.randn(1, 8, 6, 6), torch.rand(1, 25, 12, 12)
time.sleep(pause)  # other work of the program, if any
marks = [(time.perf_counter(), time.process_time())]
mark = lambda: marks.append((time.perf_counter(), time.process_time()))
jit_dispatch._kernels()
mark()
if steps == "forward,backward":
    out = carafe_cupy.carafe(features, masks, 5, 1, 2)
    mark()
    carafe_cupy.carafe_backward(torch.ones_like(out), features, masks, 5, 1, 2)
    mark()
else:
    features.requires_grad_()
    masks.requires_grad_()
    carafe_cupy.carafe(features, masks, 5, 1, 2).sum().backward()
    mark()
for (wall, cpu), (wall_end, cpu_end) in zip(marks, marks[1:]):
    print(wall_end - wall, cpu_end - cpu)
"""

# (row name, cache, steps, environment, seconds between import and the first call)
FIRST_CALL_ROWS = (
    ("empty cache", "cold", "forward,backward", {}, 0.0),
    ("from the disk cache", "cached", "forward,backward", {}, 0.0),
    ("empty cache, training step", "cold", "step", {}, 0.0),
    ("from the disk cache, training step", "cached", "step", {}, 0.0),
    ("from the disk cache, CARAFE_CUPY_CPU_WARMUP=1, first call 1 s after import",
     "cached", "forward,backward", {"CARAFE_CUPY_CPU_WARMUP": "1"}, 1.0),
)


def first_call(reps: int, trees: tuple[str, ...] = ()) -> dict[str, list[list[float]]]:
    """Per row of FIRST_CALL_ROWS, ``reps`` measurements of (wall, CPU) seconds per step,
    each in a fresh process; "cold" ones with a new empty private cache folder,
    "cached" ones with that folder filled by the process before (same rows order).
    With ``trees`` (other source trees of the package, e.g. a worktree of an older
    commit), each row is measured for this tree and then each of them in turn, and
    named with the tree."""
    roots = {"": str(ROOT), **{f" [{tree}]": tree for tree in trees}}
    result: dict[str, list[list[float]]] = {
        name + label: [] for name, *_ in FIRST_CALL_ROWS for label in roots}
    base = {k: v for k, v in os.environ.items()
            if k not in ("NUMBA_CACHE_DIR", "CARAFE_CUPY_CPU_WARMUP")}
    base[VARIABLE] = "numba"
    with tempfile.TemporaryDirectory(prefix="carafe_cupy_bench_cpu-") as folder:
        caches = (str(Path(folder) / str(index)) for index in range(10**6))
        for _ in range(reps):  # rows and trees interleaved, so each sees the same load
            for label, root in roots.items():
                cache = next(caches)
                for name, kind, steps, extra, pause in FIRST_CALL_ROWS:
                    if kind == "cold":
                        cache = next(caches)
                    env = dict(base, PYTHONPATH=root, CARAFE_CUPY_CPU_CACHE=cache, **extra)
                    # run in the tree: `python -c` puts the working folder first on sys.path
                    out = subprocess.run(
                        [sys.executable, "-c", FIRST_CALL, steps, str(pause)], cwd=root,
                        env=env, check=True, capture_output=True, text=True).stdout
                    result[name + label].append([float(value) for value in out.split()])
    return result


def _first_call_table(reps: int, trees: tuple[str, ...] = ()) -> None:
    print(f"\n| first call, fresh process, fp32, {reps} runs: wall s min / median / max "
          "(CPU s, same) | import numba + kernels | first forward | first backward |\n"
          "| --- | ---: | ---: | ---: |")
    for name, runs in first_call(reps, trees).items():
        cells = []
        for index in range(0, len(runs[0]), 2):
            wall = [run[index] for run in runs]
            cpu = [run[index + 1] for run in runs]
            cells.append(f"{_spread(wall)} ({_spread(cpu)})")
        if len(cells) == 2:  # a training step: forward and backward in one
            cells = [cells[0], cells[1] + " (forward and backward)", ""]
        print(f"| {name} | " + " | ".join(cells) + " |")


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def _row(name: str, values: list[float], cpu: list[float]) -> str:
    return (f"| {name} | {min(values):.1f} | {statistics.median(values):.1f} | "
            f"{max(values):.1f} | {min(cpu):.1f} | {statistics.median(cpu):.1f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="2,256,52,84", help="N,C,H,W of the features")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-first-call", action="store_true")
    parser.add_argument("--first-call-reps", type=int, default=3,
                        help="fresh processes per first-call measurement")
    parser.add_argument("--first-call-tree", action="append", default=[],
                        help="another source tree of the package whose first calls are "
                             "measured interleaved with this one's (repeatable)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = (*map(int, args.shape.split(",")), args.k, args.groups, args.scale)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(config)))
        return
    n, c, h, w, k, g, s = config
    print(f"N={n} C={c} {h}x{w} -> {h * s}x{w * s}, k{k} G{g} s{s}, fp32, "
          f"{torch.get_num_threads()} threads, {args.reps} interleaved rounds after a warm-up; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("\n| path, mode | min ms | median ms | max ms | CPU ms, min | CPU ms, median |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: |")
    wall, cpu = timings(config, args.reps)
    for name, values in wall.items():
        print(_row(name, values, cpu[name]))
    if not args.no_memory:
        _print_memory(args, config)
    if not args.no_first_call:
        print(f"\nload average {os.getloadavg()[0]:.1f} before the first-call runs")
        _first_call_table(args.first_call_reps, tuple(args.first_call_tree))
        print(f"load average {os.getloadavg()[0]:.1f} after them")


def _print_memory(args, config) -> None:
    n, c, h, w, k, g, s = config
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024), PYTHONPATH=str(ROOT))
    child = [sys.executable, __file__, "--memory-child", "1", "--shape", args.shape,
             "--k", str(k), "--groups", str(g), "--scale", str(s)]
    if args.threads:
        child += ["--threads", str(args.threads)]
    memory = json.loads(subprocess.run(child, env=env, check=True, capture_output=True,
                                       text=True).stdout)
    print("\n| path, mode | peak extra MiB | compulsory MiB |\n| --- | ---: | ---: |")
    for path in PATHS:
        for mode in ("forward", "forward+backward"):
            print(f"| {path} {mode} | {memory[f'{path} {mode}']:.0f} | "
                  f"{memory[f'compulsory {mode}']:.0f} |")


if __name__ == "__main__":
    main()
