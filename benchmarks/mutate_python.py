"""Plant single bugs in the Python modules one at a time and check the tests catch each.

    python benchmarks/mutate_python.py            # every mutant
    python benchmarks/mutate_python.py --list     # what would be planted
    python benchmarks/mutate_python.py --only pairs-ignore-row-stride array-device-0
    python benchmarks/mutate_python.py --quick    # the fast test files only

The Python counterpart of ``mutate_kernels.py``, with the same machinery: each
mutant of ``python_mutants.py`` (a regular expression in one module of
carafe_cupy/ and its replacement; a pattern that no longer matches is reported
before anything runs) is written into a scratch copy of the package and tests,
the tests run with ``-x`` (fast, focused files first, so a mutant usually dies
in seconds), and the text is restored before the next one. The checkout is never
modified. Not part of CI: a full run takes a while, most of it spent on
survivors, which run every file. Exit status: 0 when every mutant is killed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mutate_kernels import (  # beside this script
    CHECKOUT,
    failing_test,
    report,
    run_tests,
    scratch_copy,
)
from python_mutants import MUTANTS, PythonMutant

# Fast, focused files first: with -x most mutants die in the first few seconds.
FAST_TESTS = (
    "tests/test_plan_plumbing.py",
    "tests/test_launch_device_stream.py",
    "tests/test_host_path.py",
    "tests/test_limits.py",
    "tests/test_edge_arguments.py",
    "tests/test_dtypes_and_layouts.py",
    "tests/test_validation.py",
    "tests/test_planner.py",
    "tests/test_plan_grid_fit.py",
    "tests/test_gpu_checks.py",
    "tests/test_concurrency.py",
)
BROAD_TESTS = (
    "tests/test_reassemble.py",
    "tests/test_cpu_path.py",
    "tests/test_simulator.py",
    "tests/test_torch_integration.py",
    "tests/test_mmcv_dropin.py",
    "tests/test_dlpack.py",
    "tests/test_reassembly_modules.py",
    "tests/test_reassemble_torch.py",
)


def run_mutant(
    root: Path, mutant: PythonMutant, tests: list[str], timeout: float, env: dict
) -> tuple[str, str]:
    """Plant the mutant in ``root``, run the tests, restore. Returns (verdict, detail)."""
    path, original, mutated = mutant.plant(root)
    try:
        path.write_text(mutated)
        try:
            result = run_tests(root, tests, timeout, env)
        except subprocess.TimeoutExpired:
            return "killed", f"timed out after {timeout:.0f} s"
    finally:
        path.write_text(original)
    output = result.stdout + result.stderr
    if result.returncode == 0:
        return "SURVIVED", ""
    if result.returncode < 0 or "Fatal Python error" in output:
        return "killed", f"crash ({failing_test(output) or 'exit ' + str(result.returncode)})"
    if result.returncode == 1:
        return "killed", failing_test(output) or "tests failed"
    return "ERROR", output.strip().splitlines()[-1] if output.strip() else str(result.returncode)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--quick", action="store_true", help="run the fast test files only")
    parser.add_argument("--tests", nargs="+", help="test files (default: fast, then broad)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutant")
    args = parser.parse_args(argv)

    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutants: {', '.join(sorted(unknown))}")
    for mutant in mutants:  # every pattern must still match before anything runs
        mutant.plant(CHECKOUT)
    if args.list:
        for mutant in mutants:
            print(f"{mutant.name:45} {mutant.file}")
        return 0
    tests = args.tests or list(FAST_TESTS if args.quick else FAST_TESTS + BROAD_TESTS)

    # SIGTERM restores the sources too (through the finally in run_mutant).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scratch = Path(tempfile.mkdtemp(prefix="carafe_python_mutants_"))
    root = scratch_copy(scratch)
    # some of these tests load the baselines or run the examples
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
    for name in ("benchmarks", "examples"):
        shutil.copytree(CHECKOUT / name, root / name, ignore=ignore)
    # The copy's package first. cuda_src is not mutated, so the simulator's usual
    # module cache serves every run.
    env = {
        **os.environ,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    rows = []
    try:
        start = time.monotonic()
        baseline = run_tests(root, tests, args.timeout, env)
        if baseline.returncode != 0:
            print(baseline.stdout[-4000:] + baseline.stderr[-2000:])
            print("the unmodified sources fail these tests: no mutant can be judged")
            return 2
        print(f"unmodified sources pass in {time.monotonic() - start:.0f} s", flush=True)
        for mutant in mutants:
            start = time.monotonic()
            verdict, detail = run_mutant(root, mutant, tests, args.timeout, env)
            rows.append((mutant.name, mutant.file, verdict, time.monotonic() - start, detail))
            print(f"{verdict:8} {mutant.name:45} {rows[-1][3]:6.0f} s  {detail}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    return report(rows)


if __name__ == "__main__":
    raise SystemExit(main())
