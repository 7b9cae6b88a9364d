"""Mutants of grad_masks with 2 x 2 output pixels per thread
(cuda_src/carafe_tiled_grad_masks_quad.cuh), for benchmarks/mutate_kernels.py:
its register tile (four sums per window value, the second output row), the
staging with clamped addresses and channel masks, the prefetch of the next
channel batch, the unmasked loop over the channels every subset holds and the
masked rest, the one-kernel-row blocks (_r1), the parallel cross-warp reduction
and its tails, and the 64-bit offsets. (The clamped staging addresses need no
image mask: an element outside the image feeds only taps outside it, whose sums
are zeroed. Dropping the clamp, the clamp of a channel past a subset's end or
that of grad_output's column past the image's edge would read outside the
tensor without changing a result (its values are masked), so they have no
mutant: ASan sees them. Skipping the batch count behind the channel clamp
survived for that reason.)

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
        r"pair_access<scalar_t>::load\(at\(go_row1, go_offset\), ",
        "pair_access<scalar_t>::load(at(go_row0, go_offset), ",
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
    "grad-masks-quad-prefetch-before-staging": (
        r"(__syncwarp\(\);  // the warp's previous quad batch fully read\n)",
        r"\1        load_batch();\n",
    ),
    "grad-masks-quad-channel-step-skipped": (
        r"next_step \+= feature_bytes;",
        "next_step += 0;",
    ),
    "grad-masks-quad-grad-output-step-skipped": (
        r"go_step \+= go_bytes;",
        "go_step += 0;",
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
    # the unmasked loop over the channels every subset holds, the masked rest
    "grad-masks-quad-unmasked-to-the-chunk-end": (
        r"const index_t unmasked = common - common % channel_batch;",
        "const index_t unmasked = chunk - chunk % channel_batch;",
    ),
    "grad-masks-quad-common-of-the-second-last-subset": (
        r"channels_per_group - \(index_t\)\(SUBSETS - 1\) \* chunk",
        "channels_per_group - (index_t)(SUBSETS - 2) * chunk",
    ),
    "grad-masks-quad-unmasked-partial-batch": (
        r"const index_t unmasked = common - common % channel_batch;",
        "const index_t unmasked = common + common % channel_batch;",
    ),
    "grad-masks-quad-keep-off-by-one": (
        r"keep\[cc\] = c0 \+ cc < my_count \? ~0u : 0u;",
        "keep[cc] = c0 + cc <= my_count ? ~0u : 0u;",
    ),
    "grad-masks-quad-masked-rest-skipped": (
        r"for \(index_t c0 = unmasked; c0 < chunk; c0 \+= channel_batch\)",
        "for (index_t c0 = chunk; c0 < chunk; c0 += channel_batch)",
    ),
    "grad-masks-quad-grad-not-masked": (
        r"current\[cc\]\[a\]\[b\] = "
        r"__uint_as_float\(__float_as_uint\(grad\[cc\]\[a\]\[b\]\) & keep\[cc\]\);",
        "current[cc][a][b] = grad[cc][a][b];",
    ),
    "grad-masks-quad-halo-not-masked": (
        r"__float_as_uint\(storage<scalar_t>::widen\(staged\[cc\]\[slot\]\)\) & keep\[cc\]\);",
        "__float_as_uint(storage<scalar_t>::widen(staged[cc][slot])));",
    ),
    # one kernel row a block (_r1): its row, halo row, tap bits and output channel
    "grad-masks-rows-first-row-ignored": (
        r"const int first_row = ROWS == K \? 0 : \(int\)p\.slice;",
        "const int first_row = 0;",
    ),
    "grad-masks-rows-halo-row-not-shifted": (
        r"row0 = y / s - R \+ first_row,",
        "row0 = y / s - R,",
    ),
    "grad-masks-rows-tap-bits-not-shifted": (
        r"const index_t row = centre_y \+ first_row \+ i - R;",
        "const index_t row = centre_y + i - R;",
    ),
    "grad-masks-rows-output-channel-not-shifted": (
        r"\(p\.group \* K \* K \+ first_row \* K \+ subset\)",
        "(p.group * K * K + subset)",
    ),
    "grad-masks-rows-one-slice": (
        r"K / ROWS, g\.group_size\);",
        "1, g.group_size);",
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
    "grad-masks-quad-reducer-units-overlap": (
        r"const int v = subset \* CARAFE_MASKS_QUAD_SHARE \+ row;",
        "const int v = subset + row;",
    ),
    "grad-masks-quad-last-round-dropped": (
        r"ROUNDS = \(UNITS \+ ROUND_UNITS - 1\) / ROUND_UNITS;",
        "ROUNDS = UNITS / ROUND_UNITS;",
    ),
    "grad-masks-quad-round-tap-wrong": (
        r"const int t = round \* SUBSETS \+ subset;",
        "const int t = round * SUBSETS + subset / 2;",
    ),
    "grad-masks-quad-tap-step-short": (
        r"const index_t tap_step = SUBSETS \* ms\.c;",
        "const index_t tap_step = (SUBSETS - 1) * ms.c;",
    ),
    "grad-masks-quad-unit-row-lost": (
        r"pair_access<scalar_t>::store\(tap_out \+ row \* ms\.h, ",
        "pair_access<scalar_t>::store(tap_out, ",
    ),
    "grad-masks-quad-outside-tap-not-zeroed": (
        r"if \(!tap_in\) total = make_float2\(0, 0\);",
        "",
    ),
    "grad-masks-quad-outside-tap-rows-and-columns-swapped": (
        r"\(rows_inside >> \(t / K\)\) & \(cols_inside >> \(t % K\)\)",
        "(rows_inside >> (t % K)) & (cols_inside >> (t / K))",
    ),
    "grad-masks-quad-column-bits-off-by-one": (
        r"col >= 0 && col < g\.width \? 1u << j",
        "col >= 0 && col <= g.width ? 1u << j",
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
    "grad-masks-quad-channel-bytes-32-bit": (
        r"const index_t feature_bytes = fs\.c \* \(index_t\)sizeof\(scalar_t\);",
        "const int feature_bytes = (int)(fs.c * (index_t)sizeof(scalar_t));",
    ),
    "grad-masks-quad-grad-output-channel-bytes-32-bit": (
        r"const index_t go_bytes = gs\.c \* \(index_t\)sizeof\(scalar_t\);",
        "const int go_bytes = (int)(gs.c * (index_t)sizeof(scalar_t));",
    ),
    "grad-masks-quad-output-row-offset-32-bit": (
        r"\(p\.group \* K \* K \+ first_row \* K \+ subset\) \* ms\.c \+ y \* ms\.h",
        "(int)((p.group * K * K + first_row * K + subset) * ms.c + y * ms.h)",
    ),
    "grad-masks-quad-tap-step-32-bit": (
        r"const index_t tap_step = SUBSETS \* ms\.c;",
        "const int tap_step = (int)(SUBSETS * ms.c);",
    ),
    "grad-masks-quad-grad-output-offset-32-bit": (
        r"\(my_count > 0 \? my_begin : c_begin\) \* gs\.c \+ y \* gs\.h \+ go_x \* gs\.w;",
        "(int)((my_count > 0 ? my_begin : c_begin) * gs.c + y * gs.h) + go_x * gs.w;",
    ),
}

GRAD_MASKS_TILED = tuple(
    (name, QUAD, pattern, replacement, 0) for name, (pattern, replacement) in _CHANGES.items()
)
