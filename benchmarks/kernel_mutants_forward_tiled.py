"""Mutants of the forward and the fused forward with 2 x 2 output pixels per thread
(cuda_src/carafe_tiled_forward_quad.cuh), for benchmarks/mutate_kernels.py: its
register tile (four sums per window value, the second output row's masks and
store), the double-buffered staging (slot masks, the channel step, the batch
loaded ahead, the buffer swap), the whole batches and the partial one after
them, the tile's edges and outside taps, and the 64-bit offsets.

Left out as equivalent: the halo's row and column extents in the slot test
(``r < rows``, ``k < cols``) only keep elements no window reads out of the
staging; the count clamp of a load only stops loads of channels that are never
stored (an over-read, which the canaries cannot see); and a halo a row short
(``ROWS_MAX``) still rounds up to the same whole slots for k = 3 and 5, whose
image test (``r < rows``) then stages the last row all the same; and a last whole
batch left to the partial batch's code (``<`` for ``<=`` in the loop test) sums
the same four channels in the same order.

``FORWARD_TILED`` holds (name, files, pattern, replacement, occurrence), the
fields of kernel_mutants.Mutant; ``BARRIER_SITES`` the kernel's block barriers in
kernel_mutants_barriers.py's form (that module adds them to its sites).
"""

from __future__ import annotations

QUAD = ("carafe_tiled_forward_quad.cuh",)

# name -> (file, the barrier with enough context to match it alone)
BARRIER_SITES = {
    # a whole batch staged before any warp reads it; with one barrier a batch,
    # it also keeps a warp from restaging the buffer others read two batches ago
    "forward-quad-barrier-after-staging": (
        QUAD[0],
        r"(__syncthreads\(\);)(  // the batch staged)",
    ),
    "forward-quad-barrier-after-partial-staging": (
        QUAD[0],
        r"(__syncthreads\(\);)(  // the partial batch staged)",
    ),
}

_CHANGES = {
    # register tile: each pixel its own masks; the second row's masks and store
    "forward-quad-one-column-masks": (
        r"sum\[a\]\[b\] \+= weight\[a\]\[b\]\[i \* K \+ j\] \* value;",
        "sum[a][b] += weight[a][0][i * K + j] * value;",
    ),
    "forward-quad-one-row-masks": (
        r"sum\[a\]\[b\] \+= weight\[a\]\[b\]\[i \* K \+ j\] \* value;",
        "sum[a][b] += weight[0][b][i * K + j] * value;",
    ),
    "forward-quad-transposed-tap": (
        r"weight\[a\]\[b\]\[i \* K \+ j\] \* value;",
        "weight[a][b][j * K + i] * value;",
    ),
    "forward-quad-second-row-masks-read-first": (
        r"pair_access<scalar_t>::load\(tap_mask \+ ms\.h, ",
        "pair_access<scalar_t>::load(tap_mask, ",
    ),
    "forward-quad-second-row-stored-over-first": (
        r"pair_access<scalar_t>::store\(out \+ row_step, ",
        "pair_access<scalar_t>::store(out, ",
    ),
    "forward-quad-thread-rows-not-doubled": (
        r"const int y = \(int\)\(y0 \+ threadIdx\.y \* 2\)",
        "const int y = (int)(y0 + threadIdx.y)",
    ),
    "forward-quad-plane-a-slot-short": (
        r"PLANE = COUNT \* THREADS;",
        "PLANE = (COUNT - 1) * THREADS;",
    ),
    # staging: which slots and channels load, the channel step, the prefetch
    "forward-quad-slot-mask-of-slot-0": (
        r"if \(live >> \(cc \* COUNT \+ i\) & 1u\)",
        "if (live >> (cc * COUNT) & 1u)",
    ),
    "forward-quad-first-channel-mask-only": (
        r"for \(int cc = 0; cc < BATCH; \+\+cc\) loaded \|= inside << \(cc \* COUNT\);",
        "for (int cc = 0; cc < 1; ++cc) loaded |= inside << (cc * COUNT);",
    ),
    "forward-quad-image-top-unchecked": (
        r"if \(r < rows && k < cols && row >= 0 && ",
        "if (r < rows && k < cols && ",
    ),
    "forward-quad-image-right-off-by-one": (
        r"col >= 0 && col < width\)\n                inside \|=",
        "col >= 0 && col <= width)\n                inside |=",
    ),
    "forward-quad-channel-step-skipped": (
        r"for \(int cc = 0; cc < BATCH; \+\+cc, element \+= stride\)",
        "for (int cc = 0; cc < BATCH; ++cc, element += 0)",
    ),
    "forward-quad-next-batch-not-advanced": (
        r"slots\.template advance<scalar_t>\(batch_step\);\n",
        "",
    ),
    "forward-quad-single-buffer": (
        r"current = current == halo \? halo \+ BATCH \* PLANE : halo;",
        "current = halo;",
    ),
    # whole batches and the partial one
    "forward-quad-batch-window-not-stepped": (
        r"forward_quad_channel<scalar_t, K, PITCH>\(weight, window \+ cc \* PLANE, out, os\.h\);",
        "forward_quad_channel<scalar_t, K, PITCH>(weight, window, out, os.h);",
    ),
    "forward-quad-partial-batch-dropped-for-one-channel": (
        r"if \(tail_count > 0\) \{",
        "if (tail_count > 1) {",
    ),
    "forward-quad-partial-batch-window-not-stepped": (
        r"cc < tail_count; \+\+cc, window \+= PLANE, out \+= os\.c\)",
        "cc < tail_count; ++cc, out += os.c)",
    ),
    # edges and outside taps
    "forward-quad-bottom-edge-unchecked": (
        r"const bool inside = y < out_height && x < out_width;",
        "const bool inside = x < out_width;",
    ),
    "forward-quad-right-edge-off-by-one": (
        r"const bool inside = y < out_height && x < out_width;",
        "const bool inside = y < out_height && x <= out_width;",
    ),
    "forward-quad-outside-tap-mask-loaded": (
        r"if \(inside && tap_in_image\) \{",
        "if (inside) {",
    ),
    "forward-quad-outside-tap-rows-and-columns-swapped": (
        r"\(unsigned\)\(centre_y \+ t / K - R\) < \(unsigned\)g\.height &&\n"
        r"(\s+)\(unsigned\)\(centre_x \+ t % K - R\) < \(unsigned\)g\.width;",
        r"(unsigned)(centre_y + t % K - R) < (unsigned)g.height &&\n"
        r"\1(unsigned)(centre_x + t / K - R) < (unsigned)g.width;",
    ),
    # 64-bit offsets
    "forward-quad-slot-offset-32-bit": (
        r"source\[i\] = channel \+ \(row \* st\.h \+ col \* st\.w\);",
        "source[i] = channel + (int)(row * st.h + col * st.w);",
    ),
    "forward-quad-slice-offset-32-bit": (
        r"slots\.locate\(features \+ p\.n \* fs\.n \+ c_begin \* fs\.c,",
        "slots.locate(features + (int)(p.n * fs.n + c_begin * fs.c),",
    ),
    "forward-quad-batch-step-32-bit": (
        r"const index_t batch_step = channel_batch \* fs\.c;",
        "const index_t batch_step = (int)(channel_batch * fs.c);",
    ),
    "forward-quad-output-offset-32-bit": (
        r"output \+ p\.n \* os\.n \+ c_begin \* os\.c \+ y \* os\.h \+ x \* os\.w;",
        "output + (int)(p.n * os.n + c_begin * os.c + y * os.h) + x * os.w;",
    ),
    "forward-quad-mask-offset-32-bit": (
        r"masks \+ p\.n \* ms\.n \+ \(p\.group \* TAPS\) \* ms\.c \+ y \* ms\.h \+ x \* ms\.w;",
        "masks + (int)(p.n * ms.n + (p.group * TAPS) * ms.c + y * ms.h) + x * ms.w;",
    ),
}

# The fused forward on the same tile (FROM_LOGITS): each pixel's logits (its
# sub-pixel's channels, s * s channels a tap apart), its own softmax, the steps'
# width. Left out as equivalent: loading the logits of a thread outside the
# output too (an over-read of values never stored, which the canaries cannot see).
_FUSED_CHANGES = {
    "fused-quad-second-row-logits-a-column-apart": (
        r"tap_logit \+ a \* row_step \+ b \* ms\.c;",
        "tap_logit + a * ms.c + b * ms.c;",
    ),
    "fused-quad-second-column-logits-a-row-apart": (
        r"tap_logit \+ a \* row_step \+ b \* ms\.c;",
        "tap_logit + a * row_step + b * row_step;",
    ),
    "fused-quad-row-step-s-squared": (
        r"row_step = \(index_t\)s \* ms\.c;",
        "row_step = (index_t)(s * s) * ms.c;",
    ),
    "fused-quad-row-step-32-bit": (
        r"row_step = \(index_t\)s \* ms\.c;",
        "row_step = (int)(s * ms.c);",
    ),
    "fused-quad-tap-step-s": (
        r"tap_step = \(index_t\)\(s \* s\) \* ms\.c, row_step",
        "tap_step = (index_t)s * ms.c, row_step",
    ),
    "fused-quad-tap-step-32-bit": (
        r"tap_step = \(index_t\)\(s \* s\) \* ms\.c, row_step",
        "tap_step = (int)((s * s) * ms.c), row_step",
    ),
    "fused-quad-sub-pixel-column-ignored": (
        r"sub_x = x - centre_x \* \(int\)s;",
        "sub_x = 0;",
    ),
    "fused-quad-sub-pixel-rows-and-columns-swapped": (
        r"centre_y,\n(\s+)sub_y, centre_x, sub_x, s\);",
        r"centre_y,\n\1sub_x, centre_x, sub_y, s);",
    ),
    "fused-quad-logits-of-group-0": (
        r"logit_address<TAPS>\(masks, ms, p\.n, p\.group, 0,",
        "logit_address<TAPS>(masks, ms, p.n, 0, 0,",
    ),
    "fused-quad-logits-of-image-0": (
        r"logit_address<TAPS>\(masks, ms, p\.n, p\.group, 0,",
        "logit_address<TAPS>(masks, ms, 0, p.group, 0,",
    ),
    "fused-quad-one-pixel-normalised": (
        r"if \(inside\) softmax_in_place<TAPS>\(weight\[a\]\[b\]\);",
        "if (inside && a + b == 0) softmax_in_place<TAPS>(weight[a][b]);",
    ),
    "fused-quad-normalised-with-the-next-pixels-taps": (
        r"if \(inside\) softmax_in_place<TAPS>\(weight\[a\]\[b\]\);",
        "if (inside) softmax_in_place<TAPS>(weight[a][b ^ 1]);",
    ),
    "fused-quad-tap-not-stepped": (
        r"for \(int t = 0; t < TAPS; \+\+t, logit \+= tap_step\)",
        "for (int t = 0; t < TAPS; ++t, logit += 0)",
    ),
}
FUSED_ENTRY = ("carafe_tiled.cuh",)
_FUSED_ENTRY_CHANGES = {
    # the fused entry point built as the masks kernel
    "fused-quad-entry-reads-logits-as-masks": (
        r"carafe_forward_quad_impl<scalar_t, K, true>",
        "carafe_forward_quad_impl<scalar_t, K, false>",
    ),
}

FORWARD_TILED = tuple(
    (name, QUAD, pattern, replacement, 0)
    for name, (pattern, replacement) in {**_CHANGES, **_FUSED_CHANGES}.items()
) + tuple(
    (name, FUSED_ENTRY, pattern, replacement, 0)
    for name, (pattern, replacement) in _FUSED_ENTRY_CHANGES.items()
)
