"""Print which kernels and planner branches the plan-space test launches.

    python benchmarks/launch_coverage.py

Runs the drive of tests/test_kernel_plan_space.py on the CPU simulator (a few
seconds to a minute, plus compiling modules not yet cached) and prints two
markdown tables: every kernel with its launch count, scales and plan branches,
and every declared plan branch with its launch count.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> int:
    import test_kernel_plan_space as plan_space

    from carafe_cupy._plan import record as _launch_record

    launches: Counter = Counter()
    scales: dict[str, set[int]] = defaultdict(set)
    branches: dict[str, set[str]] = defaultdict(set)
    branch_launches: Counter = Counter()
    failures = []
    for dtype in plan_space.DTYPES:
        _, records, failed = plan_space.drive(dtype)
        failures += failed
        for record in records:
            launches[record.kernel] += 1
            scales[record.kernel].add(record.scale_factor)
            taken = _launch_record.plan_branches(record)
            branches[record.kernel] |= taken
            branch_launches.update(taken)
    defined = plan_space.defined_kernels()
    print("| module | kernel | launches | s | plan branches |\n|---|---|---|---|---|")
    for module, kernels in defined.items():
        for kernel in sorted(kernels):
            shown = ", ".join(sorted(branches[kernel])) or "-"
            s = ",".join(str(value) for value in sorted(scales[kernel])) or "-"
            print(f"| {module} | {kernel} | {launches[kernel]} | {s} | {shown} |")
    print("\n| plan branch | launches |\n|---|---|")
    for branch in _launch_record.PLAN_BRANCHES:
        print(f"| {branch} | {branch_launches[branch]} |")
    never = sum(launches[k] == 0 for kernels in defined.values() for k in kernels)
    untaken = sum(branch_launches[b] == 0 for b in _launch_record.PLAN_BRANCHES)
    print(
        f"\n{sum(launches.values())} launches; kernels never launched: {never}; "
        f"branches never taken: {untaken}; "
        f"failures: {len(failures)}"
    )
    return 1 if failures or never or untaken else 0


if __name__ == "__main__":
    raise SystemExit(main())
