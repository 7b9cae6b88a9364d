"""Mutants of the tiled kernels' block barriers, for benchmarks/mutate_kernels.py:
every ``__syncthreads()`` in cuda_src/ removed, and weakened to ``__syncwarp()``.

A weakened barrier still holds each warp together, so it only shows when one
warp runs ahead of the others: the simulator's ``warp-serial`` and
``random-warp`` orders (mutate_kernels.py runs the tests under them too).

``BARRIERS`` maps a mutant's name to ``(files, pattern, replacement)`` for
``kernel_mutants.Mutant``. Importing this module checks that every block
barrier in cuda_src/ has its two mutants, so a new barrier cannot go untested.
"""

from __future__ import annotations

import re
from pathlib import Path

from kernel_mutants_forward_tiled import BARRIER_SITES as FORWARD_TILED_SITES
from kernel_mutants_grad_masks_tiled import BARRIER_SITES as GRAD_MASKS_TILED_SITES

CUDA_SRC = Path(__file__).resolve().parent.parent / "cuda_src"

# name -> (file, the barrier with enough context to match it alone): group 1
# is the barrier call, group 2 the context, kept as it is.
SITES = {
    # staging a channel batch overwrites the halo the previous batch read
    # (removed, this is kernel_mutants.py's missing-barrier-before-restaging too)
    "forward-barrier-before-restaging": (
        "carafe_tiled_forward.cuh",
        r"(__syncthreads\(\);)(  // previous batch fully read\n)",
    ),
    # the halo is read (by every warp) after all of it is staged
    "forward-barrier-after-staging": (
        "carafe_tiled_forward.cuh",
        r"(__syncthreads\(\);)(\n        if \(!inside\) continue;)",
    ),
    # fused logits: the softmax normalisers in smem, computed by every thread
    "grad-features-barrier-after-normalisers": (
        "carafe_tiled_grad_features.cuh",
        r"(__syncthreads\(\);)(\n    \}\n\n    acc_t weight\[TAPS\];)",
    ),
    "grad-features-barrier-before-restaging": (
        "carafe_tiled_grad_features.cuh",
        r"(__syncthreads\(\);)(  // previous batch's halo and partial sums fully read\n)",
    ),
    "grad-features-barrier-after-staging": (
        "carafe_tiled_grad_features.cuh",
        r"(__syncthreads\(\);)(\n#pragma unroll 1\n        for \(int cc = 0; cc < count; \+\+cc\) "
        r"\{\n            const acc_t\* window = halo)",
    ),
    # a pixel's s * s partial sums come from threads s rows of the block apart
    "grad-features-barrier-after-partial-sums": (
        "carafe_tiled_grad_features.cuh",
        r"(__syncthreads\(\);)(\n        if \(h < g\.height && w < g\.width\) \{)",
    ),
    # grad_features with four pixels per thread: the same two around its staging
    "grad-features-quad-barrier-before-restaging": (
        "carafe_tiled_grad_features_quad.cuh",
        r"(__syncthreads\(\);)(  // previous batch's halo fully read\n)",
    ),
    "grad-features-quad-barrier-after-staging": (
        "carafe_tiled_grad_features_quad.cuh",
        r"(__syncthreads\(\);)(\n#pragma unroll 1\n        for \(int cc = 0; cc < count; \+\+cc\) "
        r"\{\n            const acc_t\* window = halo \+ cc \* slots_t)",
    ),
    # its masks staged one tap row at a time through the same shared memory
    "grad-features-quad-barrier-before-mask-row": (
        "carafe_tiled_grad_features_quad.cuh",
        r"(__syncthreads\(\);)(  // the previous tap row read)",
    ),
    "grad-features-quad-barrier-after-mask-row": (
        "carafe_tiled_grad_features_quad.cuh",
        r"(__syncthreads\(\);)(\n#pragma unroll\n            for \(int j = 0; j < K; \+\+j\) \{\n"
        r"                const float4 four)",
    ),
    # the warps' partial sums of one kernel row reuse the space of the last
    # row's (and, for the first row, the halo other warps may still read)
    "grad-masks-barrier-before-partial-sums": (
        "carafe_tiled_grad_masks.cuh",
        r"(__syncthreads\(\);)(\n        if \(subset != 0\) \{)",
    ),
    "grad-masks-barrier-after-partial-sums": (
        "carafe_tiled_grad_masks.cuh",
        r"(__syncthreads\(\);)(\n        if \(subset == 0\) \{)",
    ),
    **GRAD_MASKS_TILED_SITES,
    **FORWARD_TILED_SITES,
}

WEAKENINGS = {"removed": "", "as-syncwarp": "__syncwarp();"}

# Provably equivalent mutants (the barrier is redundant), each with its
# argument; they are left out of BARRIERS. None at present.
EQUIVALENT: dict[str, str] = {}


def _mutants() -> dict[str, tuple[tuple[str, ...], str, str]]:
    mutants = {}
    for site, (file, pattern) in SITES.items():
        for weakening, replacement in WEAKENINGS.items():
            name = f"{site}-{weakening}"
            if name in EQUIVALENT:
                continue
            mutants[name] = ((file,), pattern, replacement + r"\2")
    return mutants


def check_every_barrier_has_mutants(source_dir: Path = CUDA_SRC) -> None:
    """Raise LookupError if a block barrier in ``source_dir`` has no site here,
    or a site does not match exactly one barrier."""
    found: dict[str, list[int]] = {}
    for path in sorted(source_dir.glob("*.cu*")):
        text = path.read_text()
        found[path.name] = [m.start() for m in re.finditer(r"\b__syncthreads\w*\s*\(", text)]
    covered: dict[str, set[int]] = {name: set() for name in found}
    for site, (file, pattern) in SITES.items():
        matches = list(re.finditer(pattern, (source_dir / file).read_text()))
        if len(matches) != 1:
            raise LookupError(f"barrier site {site}: {len(matches)} matches in {file}, want 1")
        covered[file].add(matches[0].start(1))
    for file, starts in found.items():
        text = (source_dir / file).read_text()
        missing = [text.count("\n", 0, start) + 1 for start in starts if start not in covered[file]]
        if missing:
            lines = ", ".join(f"{file}:{line}" for line in missing)
            raise LookupError(f"block barriers without mutants (add them to SITES): {lines}")


check_every_barrier_has_mutants()
BARRIERS = _mutants()
