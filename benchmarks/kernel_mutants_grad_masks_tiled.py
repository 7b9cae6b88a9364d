"""Mutants of grad_masks with 2 x 2 output pixels per thread
(cuda_src/carafe_tiled_grad_masks_quad.cuh), for benchmarks/mutate_kernels.py:
its register tile (four sums per window value, the second output row), the
staging with clamped addresses and channel masks, the prefetch of the next
channel batch, the parallel cross-warp reduction and its tails, and the 64-bit
offsets. (The clamped staging addresses need no image mask: an element outside
the image feeds only taps outside it, whose sums are zeroed. Dropping the clamp
would read outside the tensor without changing a result, so it has no mutant.)

``GRAD_MASKS_TILED`` holds (name, files, pattern, replacement, occurrence), the
fields of kernel_mutants.Mutant; ``BARRIER_SITES`` the kernel's block barriers in
kernel_mutants_barriers.py's form (that module adds them to its sites).
"""

from __future__ import annotations

QUAD = ("carafe_tiled_grad_masks_quad.cuh",)

# name -> (file, the barrier with enough context to match it alone)
BARRIER_SITES = {
    # round 0 reuses the halo other warps may still read; later rounds the
    # units the last round's reducers may still read
    "grad-masks-quad-barrier-before-units": (
        QUAD[0],
        r"(__syncthreads\(\);)"
        r"(\n#pragma unroll\n        for \(int v = 0; v < ROUND_UNITS; \+\+v\))",
    ),
    "grad-masks-quad-barrier-after-units": (
        QUAD[0],
        r"(__syncthreads\(\);)(  // every subset's units of this round stored)",
    ),
}

_CHANGES = {
    # register tile: every pixel its own grad_output value and tap
    "grad-masks-quad-one-column-grad": (
        r"sum\[a\]\[b\]\[i \* K \+ j\] \+= current\[cc\]\[a\]\[b\] \* value;",
        "sum[a][b][i * K + j] += current[cc][a][0] * value;",
    ),
    "grad-masks-quad-transposed-tap": (
        r"sum\[a\]\[b\]\[i \* K \+ j\] \+= ",
        "sum[a][b][j * K + i] += ",
    ),
    "grad-masks-quad-second-row-reads-first": (
        r"pair_access<scalar_t>::load\(go_next \+ gs\.h, ",
        "pair_access<scalar_t>::load(go_next, ",
    ),
    "grad-masks-quad-window-column-for-s2-only": (
        r"window = own \+ \(int\)\(x / s - x0 / s\);",
        "window = own + (int)(x / 2 - x0 / 2);",
    ),
    # staging: masks, the last run's tail, the prefetch and the warp barriers
    "grad-masks-quad-last-run-tail-unguarded": (
        r"if \(slot < SLOTS - 1 \|\| lane \+ slot \* LANES < CHANNEL_PLANE\)",
        "if (true)",
    ),
    "grad-masks-quad-prefetch-same-batch": (
        r"load_batch\(c0 \+ channel_batch\);",
        "load_batch(c0);",
    ),
    "grad-masks-quad-channel-step-skipped": (
        r"next_step \+= fs\.c;",
        "next_step += 0;",
    ),
    "grad-masks-quad-subset-count-unclipped": (
        r"min\(chunk, c_begin \+ channels_per_group - my_begin\)",
        "chunk",
    ),
    "grad-masks-quad-missing-warp-barrier-before-restaging": (
        r"__syncwarp\(\);  // the warp's previous quad batch fully read\n",
        "",
    ),
    "grad-masks-quad-missing-warp-barrier-after-staging": (
        r"__syncwarp\(\);  // the quad batch staged\n",
        "",
    ),
    # the parallel reduction and its tails
    "grad-masks-quad-units-of-one-subset": (
        r"partial\[\(v \* SUBSETS \+ subset\) \* LANES \+ lane\] =",
        "partial[(v * SUBSETS) * LANES + lane] =",
    ),
    "grad-masks-quad-reduction-skips-a-subset": (
        r"for \(int other = 1; other < SUBSETS; \+\+other\)",
        "for (int other = 2; other < SUBSETS; ++other)",
    ),
    "grad-masks-quad-reducer-shares-overlap": (
        r"const int v = subset \* CARAFE_MASKS_QUAD_SHARE \+ share;",
        "const int v = subset + share;",
    ),
    "grad-masks-quad-last-round-dropped": (
        r"ROUNDS = \(UNITS \+ ROUND_UNITS - 1\) / ROUND_UNITS;",
        "ROUNDS = UNITS / ROUND_UNITS;",
    ),
    "grad-masks-quad-unit-row-lost": (
        r"const int t = unit >> 1, row = unit & 1;",
        "const int t = unit >> 1, row = 0;",
    ),
    "grad-masks-quad-outside-tap-not-zeroed": (
        r"if \(!tap_inside\(centre_y \+ t / K - R, centre_x \+ t % K - R, g\)\)\n"
        r"                total = make_float2\(0, 0\);",
        "",
    ),
    "grad-masks-quad-outside-tap-rows-and-columns-swapped": (
        r"tap_inside\(centre_y \+ t / K - R, centre_x \+ t % K - R, g\)",
        "tap_inside(centre_y + t % K - R, centre_x + t / K - R, g)",
    ),
    "grad-masks-quad-column-tail-off-by-one": (
        r"const bool inside = x < out_width;  // x and out_width are even",
        "const bool inside = x <= out_width;  // x and out_width are even",
    ),
    # 64-bit offsets
    "grad-masks-quad-feature-offset-32-bit": (
        r"quad_source\[slot\] = first_plane \+ \(row \* fs\.h \+ col \* fs\.w\);",
        "quad_source[slot] = first_plane + (int)(row * fs.h + col * fs.w);",
    ),
    "grad-masks-quad-subset-channel-offset-32-bit": (
        r"\(my_count > 0 \? my_begin : c_begin\) \* fs\.c;",
        "(int)((my_count > 0 ? my_begin : c_begin) * fs.c);",
    ),
    "grad-masks-quad-output-row-offset-32-bit": (
        r"masks_base \+ t \* ms\.c \+ \(y \+ row\) \* ms\.h",
        "masks_base + (int)(t * ms.c + (y + row) * ms.h)",
    ),
    "grad-masks-quad-mask-channel-offset-32-bit": (
        r"p\.group \* TAPS \* ms\.c \+ x \* ms\.w;",
        "(int)(p.group * TAPS * ms.c) + x * ms.w;",
    ),
    "grad-masks-quad-grad-output-offset-32-bit": (
        r"my_begin \* gs\.c \+ y \* gs\.h \+ x \* gs\.w;",
        "(int)(my_begin * gs.c + y * gs.h) + x * gs.w;",
    ),
}

GRAD_MASKS_TILED = tuple(
    (name, QUAD, pattern, replacement, 0) for name, (pattern, replacement) in _CHANGES.items()
)
