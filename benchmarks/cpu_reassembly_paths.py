"""The involution and CARAFE++ shapes of ``bench_reassembly.py`` on the CPU, three ways
interleaved call by call in one process: the compiled kernels as the dispatcher picks
them ("compiled"), the compiled kernels with the narrow-image forward switched off
("column-blocked": every forward on ``jit_forward``, as before ``jit_narrow``), and
the pure-PyTorch path ("torch"). Wall and CPU milliseconds (CPU: all the process's
threads), min / median / max, and the load average before and after each case.

    python benchmarks/cpu_reassembly_paths.py --threads 1 --reps 9 [--cases inv-c512-7-s1,...]
        [--levels op,module] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_* modules beside this

import torch  # noqa: E402
from bench_reassembly import FULL_CASES, make_input, run_once, runners  # noqa: E402

VARIANTS = ("compiled", "column-blocked", "torch")
MODES = ("fwd", "fwd+bwd")


def _variant(name: str) -> None:
    """Switch the process to one variant (the switch is read at every call)."""
    from carafe_cupy._cpu import jit_dispatch

    os.environ[jit_dispatch.ENVIRONMENT_VARIABLE] = "torch" if name == "torch" else "numba"
    jit_dispatch.NARROW_CENTERS = -1 if name == "column-blocked" else _NARROW_DEFAULT


def _stats(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def measure(case, level: str, mode: str, reps: int) -> dict[str, dict[str, list[float]]]:
    fn = runners(case, "cpu")[(level, "carafe_cupy")]
    x = make_input(case, "cpu", grad=mode == "fwd+bwd")
    times: dict[str, dict[str, list[float]]] = {v: {"wall": [], "cpu": []} for v in VARIANTS}
    for name in VARIANTS:  # warm-up: compile, and first touches
        _variant(name)
        run_once(fn, x, mode)
        run_once(fn, x, mode)
    for _ in range(reps):
        for name in VARIANTS:
            _variant(name)
            cpu, wall = time.process_time(), time.perf_counter()
            run_once(fn, x, mode)
            times[name]["wall"].append((time.perf_counter() - wall) * 1e3)
            times[name]["cpu"].append((time.process_time() - cpu) * 1e3)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--cases", default=None, help="comma list (default: all)")
    parser.add_argument("--levels", default="op,module")
    parser.add_argument("--out", type=Path, default=None, help="write results.md/json here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = set(args.cases.split(",")) if args.cases else None
    cases = [case for case in FULL_CASES if chosen is None or case.name in chosen]
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    lines = [f"`{command}`", "",
             f"threads {args.threads}, {args.reps} interleaved rounds, fp32; ms min / median / max",
             "",
             "| case | level | mode | load | variant | wall ms | CPU ms "
             "| torch / this (median wall) |",
             "|---|---|---|---|---|---|---|---:|"]
    print("\n".join(lines), flush=True)
    rows = []
    for case in cases:
        for level in args.levels.split(","):
            for mode in MODES:
                load = os.getloadavg()[0]
                times = measure(case, level, mode, args.reps)
                load = f"{load:.1f}-{os.getloadavg()[0]:.1f}"
                torch_median = statistics.median(times["torch"]["wall"])
                for name in VARIANTS:
                    wall, cpu = _stats(times[name]["wall"]), _stats(times[name]["cpu"])
                    ratio = torch_median / wall[1]
                    line = (f"| {case.name} | {level} | {mode} | {load} | {name} | "
                            + "/".join(f"{v:.2f}" for v in wall) + " | "
                            + "/".join(f"{v:.2f}" for v in cpu) + f" | {ratio:.1f} |")
                    print(line, flush=True)
                    lines.append(line)
                    rows.append({"case": case.name, "level": level, "mode": mode, "load": load,
                                 "variant": name, "wall_ms": times[name]["wall"],
                                 "cpu_ms": times[name]["cpu"]})
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text("\n".join(lines) + "\n")
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    return 0


from carafe_cupy._cpu import jit_dispatch as _dispatch  # noqa: E402

_NARROW_DEFAULT = _dispatch.NARROW_CENTERS

if __name__ == "__main__":
    raise SystemExit(main())
