"""``python -m carafe_cupy {info,check}``."""

from __future__ import annotations

import argparse
import sys


def _info(args: argparse.Namespace) -> int:
    from ._check import info_lines

    print("\n".join(info_lines()))
    return 0


def _check(args: argparse.Namespace) -> int:
    from ._check import format_check_table, run_checks

    results, notes = run_checks(seed=args.seed)
    print(format_check_table(results))
    for note in notes:
        print(f"note: {note}")
    failed = [result for result in results if not result.passed]
    checked = sorted({result.backend for result in results})
    print(
        f"{len(results) - len(failed)} passed, {len(failed)} failed "
        f"(backends: {', '.join(checked) or 'none'})"
    )
    return 1 if failed or not results else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m carafe_cupy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, GPUs, which backend runs, kernel cache")
    check = commands.add_parser(
        "check", help="run every available backend against a float64 reference"
    )
    check.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    handlers = {"info": _info, "check": _check}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
