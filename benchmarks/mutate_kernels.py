"""Plant single bugs in cuda_src/ one at a time and check the kernel tests catch each.

    python benchmarks/mutate_kernels.py            # every mutant
    python benchmarks/mutate_kernels.py --list     # what would be planted
    python benchmarks/mutate_kernels.py --only bf16-truncation fp16-ties-up

Each mutant is a regular expression matched against one source file (so it
survives edits elsewhere; a pattern that no longer matches is reported, not
skipped silently) and its replacement. The work happens in a scratch copy of
the package, sources and tests (the checkout is never modified, so work can go
on meanwhile): the mutated file is written, the kernel tests run with ``-x``
(the first failure kills the mutant), and the original text is restored before
the next mutant. Simulator modules go to a private cache; the copy and cache
are removed at the end. Not part of CI: a full run takes a while.

The tests run under each simulator thread order of ``--orders`` in turn
(``CARAFE_CUPY_SIM_ORDER``; default forward, then random-warp, seed
``CARAFE_CUPY_SIM_SEED`` or 0) until one kills the mutant: a block barrier
weakened to a warp barrier only shows when one warp runs ahead of the others.
Exit status: 0 when every mutant is killed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kernel_mutants import MUTANTS, Mutant  # beside this script

CHECKOUT = Path(__file__).resolve().parent.parent
COPIED = ("carafe_cupy", "cuda_src", "tests", "pyproject.toml")
# Fast, broad tests first: with -x a mutant usually dies in the first file.
KERNEL_TESTS = (
    "tests/test_kernel_forward_quad.py",  # seconds: kills its mutants first
    "tests/test_kernel_fused_quad.py",  # seconds: likewise
    "tests/test_kernel_grad_features_quad.py",  # seconds: likewise
    "tests/test_kernel_grad_masks_rows.py",  # seconds: likewise
    "tests/test_kernel_plan_space.py",
    "tests/test_kernel_bit_exact.py",
    "tests/test_kernel_extremes.py",
    "tests/test_kernel_large_offsets.py",
    "tests/test_simulator.py",
    "tests/test_fast_kernels.py",
    "tests/test_conversions.py",
    "tests/test_conversions_exhaustive.py",
    "tests/test_kernel_offset_products.py",
    "tests/test_kernel_fused_softmax.py",
    "tests/test_kernel_numeric_edges.py",
)
SIM_ORDERS = ("forward", "reverse", "random", "warp-serial", "random-warp")
DEFAULT_ORDERS = ("forward", "random-warp")


def failing_test(output: str) -> str:
    match = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return match.group(1) if match else ""


def scratch_copy(directory: Path) -> Path:
    """The package, sources and tests copied under ``directory``."""
    root = directory / "checkout"
    for name in COPIED:
        source = CHECKOUT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(source, root / name, ignore=ignore)
        else:
            root.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    return root


def run_tests(root: Path, tests: list[str], timeout: float, env: dict, order: str = "forward"):
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider"]
    env = {**env, "CARAFE_CUPY_SIM_ORDER": order}
    return subprocess.run(
        command + tests, cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )


def judge(result: subprocess.CompletedProcess) -> tuple[str, str]:
    output = result.stdout + result.stderr
    if result.returncode == 0:
        return "SURVIVED", ""
    if result.returncode < 0 or "Fatal Python error" in output:
        return "killed", f"crash ({failing_test(output) or 'exit ' + str(result.returncode)})"
    if result.returncode in (1,):
        return "killed", failing_test(output) or "tests failed"
    return "ERROR", output.strip().splitlines()[-1] if output.strip() else str(result.returncode)


def run_mutant(
    root: Path, mutant: Mutant, tests: list[str], timeout: float, env: dict, orders: list[str]
) -> tuple[str, str]:
    """Plant the mutant in ``root``, run the tests under each order until one
    kills it, restore. Returns (verdict, detail)."""
    path, original, mutated = mutant.plant(root / "cuda_src")
    verdict, detail = "SURVIVED", ""
    try:
        path.write_text(mutated)
        for order in orders:
            try:
                verdict, detail = judge(run_tests(root, tests, timeout, env, order))
            except subprocess.TimeoutExpired:
                verdict, detail = "killed", f"timed out after {timeout:.0f} s"
            if verdict != "SURVIVED":
                return verdict, f"{order}: {detail}" if len(orders) > 1 else detail
    finally:
        path.write_text(original)
    return verdict, detail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--tests", nargs="+", default=list(KERNEL_TESTS), help="test files")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per test run")
    parser.add_argument(
        "--orders",
        nargs="+",
        default=list(DEFAULT_ORDERS),
        choices=SIM_ORDERS,
        metavar="ORDER",
        help=f"simulator thread orders, tried in turn ({', '.join(SIM_ORDERS)}; "
        f"default: {' '.join(DEFAULT_ORDERS)})",
    )
    args = parser.parse_args(argv)

    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutants: {', '.join(sorted(unknown))}")
    for mutant in mutants:  # every pattern must still match before anything runs
        mutant.plant(CHECKOUT / "cuda_src")
    if args.list:
        for mutant in mutants:
            print(f"{mutant.name:45} {mutant.plant(CHECKOUT / 'cuda_src')[0].name}")
        return 0

    # SIGTERM restores the sources too (through the finally in run_mutant).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scratch = Path(tempfile.mkdtemp(prefix="carafe_mutants_"))
    root = scratch_copy(scratch)
    # the copy's package first: it finds the copy's (mutated) cuda_src
    env = {
        **os.environ,
        "CARAFE_CUPY_SIM_CACHE": str(scratch / "sim_cache"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        "CARAFE_CUPY_SIM_SEED": os.environ.get("CARAFE_CUPY_SIM_SEED", "0"),
    }
    rows = []
    try:
        for order in args.orders:
            start = time.monotonic()
            baseline = run_tests(root, args.tests, args.timeout, env, order)
            if baseline.returncode != 0:
                print(baseline.stdout[-4000:] + baseline.stderr[-2000:])
                print(f"the unmodified sources fail these tests ({order}): no mutant can be judged")
                return 2
            took = time.monotonic() - start
            print(f"unmodified sources pass in {took:.0f} s ({order})", flush=True)
        for mutant in mutants:
            start = time.monotonic()
            verdict, detail = run_mutant(root, mutant, args.tests, args.timeout, env, args.orders)
            where = mutant.plant(root / "cuda_src")[0].name
            rows.append((mutant.name, where, verdict, time.monotonic() - start, detail))
            print(f"{verdict:8} {mutant.name:45} {rows[-1][3]:6.0f} s  {detail}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    return report(rows)


def report(rows: list[tuple[str, str, str, float, str]]) -> int:
    """Print the verdict table and the score; exit status 0 when every mutant is killed."""
    killed = sum(row[2] == "killed" for row in rows)
    print("\n| mutant | file | verdict | seconds | caught by |\n|---|---|---|---|---|")
    for name, file, verdict, seconds, detail in rows:
        print(f"| {name} | {file} | {verdict} | {seconds:.0f} | {detail} |")
    print(f"\nkilled {killed} of {len(rows)} ({100 * killed / max(1, len(rows)):.0f}%)")
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
