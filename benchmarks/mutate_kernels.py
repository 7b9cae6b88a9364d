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
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
COPIED = ("carafe_cupy", "cuda_src", "tests", "pyproject.toml")
# Fast, broad tests first: with -x a mutant usually dies in the first file.
KERNEL_TESTS = (
    "tests/test_kernel_plan_space.py",
    "tests/test_kernel_bit_exact.py",
    "tests/test_kernel_extremes.py",
    "tests/test_kernel_large_offsets.py",
    "tests/test_simulator.py",
    "tests/test_fast_kernels.py",
)


@dataclass(frozen=True)
class Mutant:
    name: str
    files: tuple[str, ...]  # in cuda_src/, in the order the kernel source includes them
    pattern: str
    replacement: str
    occurrence: int = 0  # which match to change (counted across ``files``)

    def plant(self, source_dir: Path) -> tuple[Path, str, str]:
        """(file, its text, its text with the mutant planted)."""
        seen = 0
        for name in self.files:
            path = source_dir / name
            text = path.read_text()
            matches = list(re.finditer(self.pattern, text))
            if self.occurrence < seen + len(matches):
                match = matches[self.occurrence - seen]
                mutated = text[: match.start()] + match.expand(self.replacement)
                return path, text, mutated + text[match.end() :]
            seen += len(matches)
        raise LookupError(
            f"{self.name}: pattern {self.pattern!r} matches {seen} times in "
            f"{', '.join(self.files)}; occurrence {self.occurrence} wanted"
        )


# the tiled kernels: carafe_tiled.cuh (helpers, entry points) and the parts it includes
TILED = (
    "carafe_tiled.cuh",
    "carafe_tiled_forward.cuh",
    "carafe_tiled_grad_masks.cuh",
    "carafe_tiled_grad_features.cuh",
)
COMMON, GENERAL = ("carafe_common.cuh",), ("carafe.cu",)
OUT_OFFSET = r"p\.n \* os\.n \+ \(c0 \+ cc\) \* os\.c \+ y \* os\.h \+ x \* os\.w"

MUTANTS = (
    # index width
    Mutant(
        "tiled-output-offset-32-bit", TILED, rf"output \+ ({OUT_OFFSET})", r"output + (int)(\1)"
    ),
    Mutant(
        "tiled-grad-features-offset-32-bit",
        TILED,
        r"grad_features \+ (p\.n \* fs\.n \+ \(c0 \+ cc\) \* fs\.c \+ h \* fs\.h \+ w \* fs\.w)",
        r"grad_features + (int)(\1)",
    ),
    Mutant(
        "fused-logit-address-32-bit",
        TILED,
        r"return logits \+ (n \* st\.n \+ channel \* st\.c \+ h \* st\.h \+ w \* st\.w);",
        r"return logits + (int)(\1);",
    ),
    Mutant(
        "general-output-offset-32-bit",
        GENERAL,
        r"output \+ (n \* output_strides\.n \+ c \* output_strides\.c \+\s+"
        r"y \* output_strides\.h \+ x \* output_strides\.w)",
        r"output + (int)(\1)",
    ),
    # shared-memory layout and synchronisation
    Mutant(
        # one short is exact for one pixel per thread at s = 1 (pairs keep a spare column)
        "halo-pitch-one-short",
        TILED,
        r"return \(CARAFE_TILE_THREADS_X \* PAIR - 1 \+ PAIR - 1\) / PAIR \+ K;",
        r"return (CARAFE_TILE_THREADS_X * PAIR - 1 + PAIR - 1) / PAIR + K - 1;",
    ),
    Mutant(
        "missing-barrier-before-restaging",
        TILED,
        r"__syncthreads\(\);  // previous batch fully read\n",
        "",
    ),
    Mutant(
        "grad-masks-missing-warp-barrier-before-restaging",
        TILED,
        r"__syncwarp\(\);  // the warp's previous batch fully read\n",
        "",
    ),
    Mutant(
        "grad-features-partial-sum-pitch",
        TILED,
        r"partial\[cc \* partial_pitch \+ first \+ a \* blockDim\.x \+ b\]",
        "partial[cc * partial_pitch + first + a * s + b]",
    ),
    # tile and image edges
    Mutant(
        "forward-tile-edge-x",
        TILED,
        r"const bool inside = y < out_height && x < out_width;  // PAIR",
        "const bool inside = y < out_height;  // PAIR",
    ),
    Mutant(
        "grad-masks-row-edge-x",
        TILED,
        r"const bool inside = x < out_width;\n",
        "const bool inside = true;\n",
    ),
    Mutant(
        "grad-features-tile-edge-x",
        TILED,
        r"if \(h < g\.height && w < g\.width\) \{",
        "if (h < g.height) {",
    ),
    Mutant(
        "halo-row-bound-off-by-one", TILED, r"row < height && col >= 0", "row <= height && col >= 0"
    ),
    Mutant(
        "general-column-bound-off-by-one",
        GENERAL,
        r"if \(feature_x < 0 \|\| feature_x >= g\.width\) continue;",
        "if (feature_x < 0 || feature_x > g.width) continue;",
    ),
    Mutant(
        "channel-slice-overrun",
        TILED,
        r"const index_t c_end = min\(c_begin \+ channels_per_block, "
        r"group_begin \+ channels_per_group\);",
        "const index_t c_end = c_begin + channels_per_block;",
    ),
    Mutant(
        "grad-masks-last-channel-dropped",
        TILED,
        r"const index_t c_end = c_begin \+ channels_per_group;",
        "const index_t c_end = c_begin + channels_per_group - 1;",
    ),
    # indexing
    Mutant(
        "general-wrong-group-index",
        GENERAL,
        r"const index_t group = c / channels_per_group;",
        "const index_t group = c % g.group_size;",
    ),
    Mutant(
        "tiled-wrong-mask-channel",
        TILED,
        r"\(p\.group \* TAPS \+ t\) \* ms\.c \+ y \* ms\.h \+",
        "(p.group * K + t) * ms.c + y * ms.h +",
    ),
    Mutant(
        "general-transposed-mask-tap",
        GENERAL,
        r"mask_pixel \+ \(i \* g\.kernel_size \+ j\) \* mask_strides\.c",
        "mask_pixel + (j * g.kernel_size + i) * mask_strides.c",
    ),
    Mutant("pair-store-swapped", TILED, r"make_float2\(a, b\)", "make_float2(b, a)"),
    Mutant(
        "general-grad-masks-tap-column",
        GENERAL,
        r"\(tap % g\.kernel_size - radius\) \* g\.dilation",
        "(tap / g.kernel_size - radius) * g.dilation",
    ),
    # stride and dilation (general kernels)
    Mutant(
        "general-forward-ignores-stride",
        GENERAL,
        r"y / g\.scale_factor \* g\.stride - radius \* g\.dilation",
        "y / g.scale_factor - radius * g.dilation",
    ),
    Mutant(
        "general-forward-ignores-column-dilation",
        GENERAL,
        r"left \+ j \* g\.dilation",
        "left + j",
    ),
    Mutant(
        "general-center-count-floors",
        GENERAL,
        r"return \(size \+ stride - 1\) / stride;",
        "return size / stride;",
    ),
    Mutant(
        "general-grad-features-skips-divisibility",
        GENERAL,
        r"if \(remainder == 0\) return tap;",
        "return tap;",
    ),
    Mutant(
        "general-grad-features-center-bound-off-by-one",
        GENERAL,
        r"center_x >= center_cols\) continue;",
        "center_x > center_cols) continue;",
    ),
    Mutant(
        "general-grad-features-dilation-sign",
        GENERAL,
        r"reach = position \+ radius \* dilation;",
        "reach = position - radius * dilation;",
    ),
    Mutant(
        "general-grad-features-tap-step-ignores-gcd",
        GENERAL,
        r"t / greatest_common_divisor\(dilation, t\)",
        "t",
    ),
    Mutant(
        "general-grad-features-center-step",
        GENERAL,
        r"dilation \* tap_step / t,",
        "tap_step,",
    ),
    Mutant(
        "general-grad-masks-row-without-dilation",
        GENERAL,
        r"\(tap / g\.kernel_size - radius\) \* g\.dilation",
        "(tap / g.kernel_size - radius)",
    ),
    Mutant(
        "general-grad-masks-column-without-stride",
        GENERAL,
        r"x / g\.scale_factor \* g\.stride \+",
        "x / g.scale_factor +",
    ),
    Mutant(
        "general-forward-single-pass",
        GENERAL,
        r"index < total; index \+= grid_stride\(\)",
        "index < total; index = total",
    ),
    Mutant(
        "forward-mask-tap-stride",
        TILED,
        r"tap_step = ms\.c;",
        "tap_step = ms.w;",
    ),
    Mutant(
        "fused-pair-logit-channel",
        TILED,
        r"storage<scalar_t>::load\(tap_mask \+ q \* ms\.c\)",
        "storage<scalar_t>::load(tap_mask + q * ms.w)",
    ),
    Mutant(
        "forward-halo-slot-row-bound",
        TILED,
        r"r < rows && k < cols && row >= 0 && row < height",
        "r < rows && k < cols && row >= 0 && row <= height",
    ),
    # special values
    Mutant(
        "forward-outside-tap-weight-kept",
        TILED,
        r"if \(!tap_in_image\)",
        "if (false)",
    ),
    # softmax of the fused normaliser
    Mutant(
        "softmax-without-max-subtraction",
        TILED,
        r"values\[t\] = accumulate_exp\(values\[t\] - largest\);",
        "values[t] = accumulate_exp(values[t]);",
    ),
    Mutant(
        "fused-grad-logits-without-the-dot-term",
        TILED,
        r"probability\[t\] \* \(sum\[q\]\[t\] - dot\)",
        "probability[t] * sum[q][t]",
    ),
    Mutant(
        "fused-grad-features-normaliser-without-max",
        TILED,
        r"shared\[2 \* e\] = largest;",
        "shared[2 * e] = 0;",
    ),
    # low-precision conversions
    Mutant(
        "fp16-ties-up",
        COMMON,
        r"remainder > 0x1000u \|\| \(remainder == 0x1000u && \(result & 1u\)\)",
        "remainder >= 0x1000u",
    ),
    Mutant(
        "fp16-subnormal-shift-off-by-one",
        COMMON,
        r"const unsigned int shift = 126u - exponent;",
        "const unsigned int shift = 125u - exponent;",
    ),
    Mutant(
        "fp16-subnormal-load-scale",
        COMMON,
        r"\(float\)mantissa \* 5\.9604644775390625e-8f",
        "(float)mantissa * 1.1920928955078125e-7f",
    ),
    Mutant(
        "bf16-truncation",
        COMMON,
        r"const unsigned int rounding = 0x7FFFu \+ \(\(x >> 16\) & 1u\);",
        "const unsigned int rounding = 0u;",
    ),
    Mutant(
        "bf16-infinity-made-nan",
        COMMON,
        r"if \(\(x & 0x7FFFFFFFu\) > 0x7F800000u\)",
        "if ((x & 0x7FFFFFFFu) >= 0x7F800000u)",
    ),
)


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


def run_tests(root: Path, tests: list[str], timeout: float, env: dict):
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider"]
    return subprocess.run(
        command + tests, cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_mutant(
    root: Path, mutant: Mutant, tests: list[str], timeout: float, env: dict
) -> tuple[str, str]:
    """Plant the mutant in ``root``, run the tests, restore. Returns (verdict, detail)."""
    path, original, mutated = mutant.plant(root / "cuda_src")
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
    if result.returncode in (1,):
        return "killed", failing_test(output) or "tests failed"
    return "ERROR", output.strip().splitlines()[-1] if output.strip() else str(result.returncode)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--tests", nargs="+", default=list(KERNEL_TESTS), help="test files")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per mutant")
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
    }
    rows = []
    try:
        start = time.monotonic()
        baseline = run_tests(root, args.tests, args.timeout, env)
        if baseline.returncode != 0:
            print(baseline.stdout[-4000:] + baseline.stderr[-2000:])
            print("the unmodified sources fail these tests: no mutant can be judged")
            return 2
        print(f"unmodified sources pass in {time.monotonic() - start:.0f} s", flush=True)
        for mutant in mutants:
            start = time.monotonic()
            verdict, detail = run_mutant(root, mutant, args.tests, args.timeout, env)
            where = mutant.plant(root / "cuda_src")[0].name
            rows.append((mutant.name, where, verdict, time.monotonic() - start, detail))
            print(f"{verdict:8} {mutant.name:45} {rows[-1][3]:6.0f} s  {detail}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    killed = sum(row[2] == "killed" for row in rows)
    print("\n| mutant | file | verdict | seconds | caught by |\n|---|---|---|---|---|")
    for name, file, verdict, seconds, detail in rows:
        print(f"| {name} | {file} | {verdict} | {seconds:.0f} | {detail} |")
    print(f"\nkilled {killed} of {len(rows)} ({100 * killed / max(1, len(rows)):.0f}%)")
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
