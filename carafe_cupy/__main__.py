"""Command line: python -m carafe_cupy {demo,info,check,bench}."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path


def _info(args: argparse.Namespace) -> int:
    from ._cli.check import info_lines

    print("\n".join(info_lines()))
    return 0


def _check(args: argparse.Namespace) -> int:
    from ._cli.check import format_check_table, run_checks, summary_lines

    results, notes = run_checks(seed=args.seed)
    if results:
        print(format_check_table(results))
    for note in notes:
        print(f"note: {note}")
    print("\n".join(summary_lines(results)))
    failed = any(result.status == "FAIL" for result in results)
    return 1 if failed or not results else 0


def _benchmark_script(name: str = "bench_carafe.py") -> Path:
    """benchmarks/<name>: shipped in the wheel, or in a source checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "benchmarks", package.parent / "benchmarks"):
        if (candidate / name).is_file():
            return candidate / name
    raise SystemExit(f"carafe_cupy: benchmarks/{name} not found in this install")


def _load_benchmark(script: str, name: str):
    spec = importlib.util.spec_from_file_location(name, _benchmark_script(script))
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses and pickling look the module up
    spec.loader.exec_module(bench)
    return bench


def _bench(bench_args: list[str]) -> int:
    forwarded = list(bench_args)
    if "--peers" in forwarded:
        # --peers: the CPU path against torch.compile loops and the eager unfold port
        forwarded.remove("--peers")
        bench = _load_benchmark("bench_cpu_peers.py", "carafe_cupy_bench_cpu_peers")
        return bench.main(forwarded, prog="python -m carafe_cupy bench --peers")
    # --reassembly: involution and CARAFE++ downsampling against unfold instead
    reassembly = "--reassembly" in forwarded
    if reassembly:
        forwarded.remove("--reassembly")
    bench = _load_benchmark(
        "bench_reassembly.py" if reassembly else "bench_carafe.py",
        "carafe_cupy_bench_reassembly" if reassembly else "carafe_cupy_bench",
    )
    if reassembly:
        return bench.main(forwarded)
    return bench.main(forwarded, prog="python -m carafe_cupy bench", quick_by_default=True)


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
    for name in ("steps", "seeds", "jobs"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
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
        help="train one small segmentation network per upsampler (CARAFE, nearest, bilinear, "
        "deconvolution, pixel shuffle) on generated scenes; compare held-out mIoU and "
        "boundary scores",
    )
    demo.add_argument("--out", default="carafe_demo_out", help="where plots and results go")
    demo.add_argument(
        "--quick",
        action="store_true",
        help="reduced run (CI): a few steps on small scenes, from two seeds",
    )
    quick = DemoConfig.quick()
    demo.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps per network (default {DemoConfig.steps}; {quick.steps} with --quick)",
    )
    demo.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds each upsampler is trained from, at least 2; scores are means with 95%% "
        f"t-intervals over them (default {DemoConfig.seeds}; {quick.seeds} with --quick)",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=0,
        help="first seed of the generated scenes and initial weights (default %(default)s)",
    )
    demo.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="networks trained at once, in worker processes (default: one per CPU core at "
        "--threads each, one on a GPU; results do not depend on it)",
    )
    demo.add_argument(
        "--threads",
        type=int,
        default=DemoConfig.threads,
        help="torch CPU threads (fixed, so results repeat; default %(default)s)",
    )
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda")
    demo.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (they are drawn only on a terminal anyway)",
    )


PROFILE_INSTALL_HINT = (
    "the profile compiles the kernels with NVRTC through CuPy and disassembles them with "
    "nvdisasm (no GPU needed): from the repository, pip install \".[cuda13,profile]\" "
    "(or \".[cuda12,profile]\" on a CUDA 12 driver)"
)


def _profile(args: argparse.Namespace) -> int:
    from . import KernelsUnavailableError
    from ._profile import cli as profile_cli

    try:
        return profile_cli.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"profile: {error}", file=sys.stderr)
        return 2
    except KernelsUnavailableError as error:  # CuPy or NVRTC missing: say what to install
        print(f"profile: {error}\nprofile: {PROFILE_INSTALL_HINT}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m carafe_cupy",
        description="CARAFE content-aware upsampling for PyTorch and CuPy: a demo, a report "
        "of what this machine can run, a self-test and a benchmark.",
        epilog="Run python -m carafe_cupy COMMAND --help for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_demo_parser(commands)
    commands.add_parser("info", help="versions, GPUs, which backend runs, kernel cache")
    check = commands.add_parser(
        "check", help="run every available backend against a float64 reference"
    )
    check.add_argument(
        "--seed", type=int, default=0, help="seed of the random test inputs (default %(default)s)"
    )
    commands.add_parser(
        "bench",
        help="benchmark against the unfold and shift baselines (short run; --full for all; "
        "other options go to benchmarks/bench_carafe.py); --reassembly: Involution and "
        "CARAFEDownPack against unfold (benchmarks/bench_reassembly.py); --peers: the CPU "
        "path against torch.compile loops and the eager unfold port at one shape "
        "(benchmarks/bench_cpu_peers.py)",
    )
    from ._profile import cli as profile_cli

    profile_cli.add_parser(commands)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])  # its options are the benchmark script's own
    args = parser.parse_args(argv)
    handlers = {"info": _info, "check": _check, "demo": _demo, "profile": _profile}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
