"""Mutants of grad_features with four input pixels per thread
(cuda_src/carafe_tiled_grad_features_quad.cuh), for benchmarks/mutate_kernels.py:
the shuffle reduction, the register tile of masks and sums, the masks' staging
through shared memory, the image tails, and the halo's staging slots; and the
one-pixel kernel's sub-pixel reduction, which must associate as the shuffles do. Its
four block barriers are in kernel_mutants_barriers.py with every other barrier.

Each entry is (name, files, pattern, replacement, occurrence), the fields of
kernel_mutants.Mutant; files are in cuda_src/.

Left out as equivalent: dropping ``if (cc >= count) break;`` from the unrolled batch
(fp16 and bf16 at K = 5) stages the channels after a partial batch into halo planes
that are never read; it only over-reads grad_output, which the canary-framed tests
keep inside their frame.
"""

from __future__ import annotations

QUAD = ("carafe_tiled_grad_features_quad.cuh",)

SHUFFLES = (
    # the partner across b is the next lane, not the one across both sub-pixel axes
    (
        "grad-features-quad-shuffle-b-partner",
        QUAD,
        r"__shfl_xor_sync\(WARP, send0, 1\)",
        "__shfl_xor_sync(WARP, send0, 3)",
        0,
    ),
    (
        "grad-features-quad-shuffle-a-partner",
        QUAD,
        r"__shfl_xor_sync\(WARP, send, 2\)",
        "__shfl_xor_sync(WARP, send, 1)",
        0,
    ),
    # a lane sends the pixels it keeps
    (
        "grad-features-quad-shuffle-sends-kept-half",
        QUAD,
        r"send0 = b \? sum\[0\] : sum\[2\]",
        "send0 = b ? sum[2] : sum[0]",
        0,
    ),
    (
        "grad-features-quad-shuffle-keeps-sent-pixel",
        QUAD,
        r"keep = a \? row1 : row0;",
        "keep = a ? row0 : row1;",
        0,
    ),
    # the lane stores another pixel than the one its total is for
    (
        "grad-features-quad-stored-pixel-transposed",
        QUAD,
        r"const int mine = 2 \* sub_x \+ sub_y;",
        "const int mine = 2 * sub_y + sub_x;",
        0,
    ),
)

REGISTER_TILE = (
    # the window column of a tap ignores the pixel's place in the quad
    (
        "grad-features-quad-tap-column-without-pixel",
        QUAD,
        r"const int j = q \+ K - 1 - d;",
        "const int j = K - 1 - d;",
        0,
    ),
    (
        "grad-features-quad-first-tap-column-dropped",
        QUAD,
        r"if \(j >= 0 && j < K\)",
        "if (j > 0 && j < K)",
        0,
    ),
    # the window's rows, read 16 bytes at a time
    (
        "grad-features-quad-window-row-pitch",
        QUAD,
        r"window - i \* CENTRE_PITCH \+ 4 \* v\)",
        "window - i * (CENTRE_PITCH - 4) + 4 * v)",
        0,
    ),
    (
        "grad-features-quad-window-vector-lane",
        QUAD,
        r"value\[4 \* v \+ 1\] = four\.y;",
        "value[4 * v + 1] = four.x;",
        0,
    ),
    (
        "grad-features-quad-window-sub-planes-transposed",
        QUAD,
        r"base = sub_y \* slots_t::A_PITCH \+ sub_x \* slots_t::B_PITCH",
        "base = sub_x * slots_t::A_PITCH + sub_y * slots_t::B_PITCH",
        0,
    ),
)

MASKS = (
    # the masks staged through shared memory, a tap row at a time
    (
        "grad-features-quad-masks-vector-lane",
        QUAD,
        r"weight\[1\]\[i \* K \+ j\] = four\.y;",
        "weight[1][i * K + j] = four.z;",
        0,
    ),
    (
        "grad-features-quad-masks-sub-planes-transposed",
        QUAD,
        r"const int mine = sub_y \* A_PITCH \+ sub_x \* B_PITCH",
        "const int mine = sub_x * A_PITCH + sub_y * B_PITCH",
        0,
    ),
    (
        "grad-features-quad-masks-stored-planes-transposed",
        QUAD,
        r"const int stored = row_first % S \* A_PITCH \+ column % S \* B_PITCH",
        "const int stored = column % S * A_PITCH + row_first % S * B_PITCH",
        0,
    ),
    (
        "grad-features-quad-masks-pass-row",
        QUAD,
        r"m \* \(ROW_GROUPS / S\) \* CARAFE_FEATURES_QUAD_TILE_COLS\] = value",
        "m * ROW_GROUPS * CARAFE_FEATURES_QUAD_TILE_COLS] = value",
        0,
    ),
    (
        "grad-features-quad-masks-tap-row-step",
        QUAD,
        r"row_step = K \* ms\.c - S \* ms\.h",
        "row_step = K * ms.c - ms.h",
        0,
    ),
    (
        "grad-features-quad-masks-tap-column-step",
        QUAD,
        r"col_step = ms\.c - S \* ms\.w",
        "col_step = ms.c - ms.w",
        0,
    ),
    (
        "grad-features-quad-masks-pass-step",
        QUAD,
        r"pass_step = ROW_GROUPS \* ms\.h;",
        "pass_step = ms.h;",
        0,
    ),
    # a tap whose centre lies outside the image must weigh zero (its mask there is
    # another pixel's, or outside the tensor)
    (
        "grad-features-quad-masks-column-bound",
        QUAD,
        r"if \(centre_w >= 0 && centre_w < g\.width\)",
        "if (centre_w >= 0 && centre_w <= g.width)",
        0,
    ),
    (
        "grad-features-quad-masks-columns-left-of-image",
        QUAD,
        r"if \(centre_w >= 0 && ",
        "if (centre_w >= -1 && ",
        0,
    ),
    (
        "grad-features-quad-masks-row-bound",
        QUAD,
        r"if \(centre_h >= 0 && centre_h < g\.height\)",
        "if (centre_h >= 0 && centre_h <= g.height)",
        0,
    ),
    (
        "grad-features-quad-masks-rows-above-image",
        QUAD,
        r"if \(centre_h >= 0 && ",
        "if (centre_h >= -1 && ",
        0,
    ),
)

TAILS = (
    # pixels past the image's right edge or bottom are stored too
    (
        "grad-features-quad-tail-column-unchecked",
        QUAD,
        r"const bool stores = h < g\.height && w \+ mine < g\.width;",
        "const bool stores = h < g.height;",
        0,
    ),
    (
        "grad-features-quad-tail-row-unchecked",
        QUAD,
        r"const bool stores = h < g\.height && ",
        "const bool stores = ",
        0,
    ),
    # the last, partial tile row is never visited
    (
        "grad-features-quad-tiles-y-rounded-down",
        QUAD,
        r"\(g\.height \+ CARAFE_FEATURES_QUAD_TILE_ROWS - 1\) / CARAFE_FEATURES_QUAD_TILE_ROWS",
        "g.height / CARAFE_FEATURES_QUAD_TILE_ROWS",
        0,
    ),
    (
        "grad-features-quad-output-channel-not-advanced",
        QUAD,
        r"            out \+= fs\.c;\n",
        "",
        0,
    ),
)

STAGING = (
    (
        "grad-features-quad-staging-row-step",
        QUAD,
        r"row_step = ROW_GROUPS \* gs\.h;",
        "row_step = (ROW_GROUPS - 1) * gs.h;",
        0,
    ),
    (
        "grad-features-quad-staging-span-step",
        QUAD,
        r"span_step = WARP \* gs\.w;",
        "span_step = (WARP - 2) * gs.w;",
        0,
    ),
    # the right span's image test made with the left span's column
    (
        "grad-features-quad-staging-span-column-unchecked",
        QUAD,
        r"const index_t x = col0 \+ column \+ span \* WARP;",
        "const index_t x = col0 + column;",
        0,
    ),
    (
        "grad-features-quad-staging-column-bound",
        QUAD,
        r"x >= 0 && x < out_width\)\n",
        "x >= 0 && x <= out_width)\n",
        0,
    ),
    (
        "grad-features-quad-staging-row-bound",
        QUAD,
        r"y >= 0 && y < out_height",
        "y >= 0 && y <= out_height",
        0,
    ),
    (
        "grad-features-quad-staging-rows-above-image",
        QUAD,
        r"if \(y >= 0 && y < out_height",
        "if (y >= -1 && y < out_height",
        0,
    ),
    # the sub-pixel row's planes taken as the column's
    (
        "grad-features-quad-staging-planes-transposed",
        QUAD,
        r"at = \(group % S\) \* A_PITCH \+ \(column % S\) \* B_PITCH",
        "at = (column % S) * A_PITCH + (group % S) * B_PITCH",
        0,
    ),
    (
        "grad-features-quad-staging-slot-row-step",
        QUAD,
        r"plane\[at \+ i \* ROW_STEP \+ span \* SPAN_STEP\]",
        "plane[at + i * (ROW_STEP - 1) + span * SPAN_STEP]",
        0,
    ),
    (
        "grad-features-quad-staging-slot-span-step",
        QUAD,
        r"plane\[at \+ i \* ROW_STEP \+ span \* SPAN_STEP\]",
        "plane[at + i * ROW_STEP + span * (SPAN_STEP - 1)]",
        0,
    ),
    # the columns past 64, one element a thread
    (
        "grad-features-quad-staging-extra-never-loaded",
        QUAD,
        r"if \(y >= 0 && y < out_height && x >= 0 && x < out_width\) loaded \|= 1u << EXTRA_BIT;",
        "if (false) loaded |= 1u << EXTRA_BIT;",
        0,
    ),
    (
        "grad-features-quad-staging-extra-column",
        QUAD,
        r"extra_c = SPANS \* WARP \+ thread % EXTRA_WIDTH;",
        "extra_c = SPANS * WARP - 2 + thread % EXTRA_WIDTH;",
        0,
    ),
    (
        "grad-features-quad-staging-extra-offset",
        QUAD,
        r"extra_offset = \(index_t\)\(extra_r - group\) \* gs\.h",
        "extra_offset = (index_t)extra_r * gs.h",
        0,
    ),
    (
        "grad-features-quad-staging-extra-planes-transposed",
        QUAD,
        r"extra_at = \(extra_r % S\) \* A_PITCH \+ \(extra_c % S\) \* B_PITCH",
        "extra_at = (extra_c % S) * A_PITCH + (extra_r % S) * B_PITCH",
        0,
    ),
    (
        "grad-features-quad-staging-extra-past-halo",
        QUAD,
        r"if \(EXTRA_COLS > 0 && extra_r < HALO_ROWS\)",
        "if (EXTRA_COLS > 0)",
        0,
    ),
    (
        "grad-features-quad-staging-past-count",
        QUAD,
        r"(for \(int cc = 0; cc )< count(; \+\+cc\) stage_channel)",
        r"\1<= count\2",
        0,
    ),
    (
        "grad-features-quad-staging-channel-offset",
        QUAD,
        r"staged_offset \+= channel_batch \* gs\.c;",
        "staged_offset += gs.c;",
        0,
    ),
)

ONE_PIXEL = ("carafe_tiled_grad_features.cuh",)

# The one-pixel kernel's reduction of a pixel's s * s sub-pixel sums, which must
# associate as the four-pixel kernel's shuffles do (the planner picks either), and
# its staging's raw loads.
ONE_PIXEL_REDUCTION = (
    # the sums added one after another, as before both kernels shared one order
    (
        "grad-features-sub-pixel-sums-serial",
        ONE_PIXEL,
        r"total \+= sub_pixel_row_total\(sums \+ a \* blockDim\.x, s\);",
        "for (int b = 0; b < s; ++b) total += sums[a * blockDim.x + b];",
        0,
    ),
    # a row's last sub-pixel left out
    (
        "grad-features-sub-pixel-row-short",
        ONE_PIXEL,
        r"for \(int b = 1; b < s; \+\+b\) total \+= sums\[b\];",
        "for (int b = 1; b < s - 1; ++b) total += sums[b];",
        0,
    ),
    # fp16 / bf16 staging stores the raw bits as a number, not the value they encode
    (
        "grad-features-staging-stores-raw-bits",
        ONE_PIXEL,
        r"halo\[cc \* plane \+ at\[i\]\] = storage<scalar_t>::widen\(value\[cc\]\[i\]\);",
        "halo[cc * plane + at[i]] = (acc_t)value[cc][i];",
        0,
    ),
    # the rows' sum leaves out the first row
    (
        "grad-features-sub-pixel-first-row-dropped",
        ONE_PIXEL,
        r"total = sub_pixel_row_total\(sums, s\);",
        "total = 0;",
        0,
    ),
)

GRAD_FEATURES_TILED = SHUFFLES + REGISTER_TILE + MASKS + TAILS + STAGING + ONE_PIXEL_REDUCTION
