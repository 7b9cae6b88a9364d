"""``python -m carafe_cupy {info,check,demo}``."""

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


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .demo import DemoConfig, DemoDependencyError, run_demo

    settings = {
        "seed": args.seed,
        "threads": args.threads,
        "device": args.device,
        "out_dir": Path(args.out),
        "progress": not args.no_progress,
    }
    if args.steps is not None:
        settings["steps"] = args.steps
    config = DemoConfig.quick(**settings) if args.quick else DemoConfig(**settings)
    try:
        run_demo(config)
    except (DemoDependencyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _add_demo_parser(commands: argparse._SubParsersAction) -> None:
    from .demo import DemoConfig

    demo = commands.add_parser(
        "demo",
        help="train one small x2 upsampling network per upsampler (CARAFE, nearest, bilinear, "
        "deconvolution, pixel shuffle) on photographs and compare held-out PSNR",
    )
    demo.add_argument("--out", default="carafe_demo_out", help="where plots and results go")
    demo.add_argument("--quick", action="store_true", help="reduced run (CI): fewer, smaller steps")
    demo.add_argument("--steps", type=int, default=None, help="training steps per upsampler")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--threads",
        type=int,
        default=DemoConfig.threads,
        help="torch CPU threads (fixed, so results repeat; default %(default)s)",
    )
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m carafe_cupy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, GPUs, which backend runs, kernel cache")
    check = commands.add_parser(
        "check", help="run every available backend against a float64 reference"
    )
    check.add_argument("--seed", type=int, default=0)
    _add_demo_parser(commands)
    args = parser.parse_args(argv)
    handlers = {"info": _info, "check": _check, "demo": _demo}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
