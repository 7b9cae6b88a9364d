// Tiled CARAFE kernels: grad_masks with 2 x 2 output pixels per thread (even s).
// Part of carafe_tiled.cuh, which includes it after carafe_tiled_grad_masks.cuh
// (whose CARAFE_MASKS_SUBSETS it shares).
#pragma once

// For even s, the output pixels (y, x), (y, x + 1), (y + 1, x) and (y + 1, x + 1),
// with y and x even, come from one input pixel and read the same K x K window:
// each window value read from shared memory serves four sums, 4 * K * K
// accumulators a thread. A block owns two output rows of 64 pixels; as in the
// one-pixel kernel, its warps each sum an ascending subset of the group's
// channels, staging their own halo (K input rows) with warp barriers only.
// Each warp loads its next channel batch (halo and grad_output) before it sums
// the current one, so those loads are in flight during the FMAs.
//
// ROWS is K (every tap) or 1: then a block sums one kernel row's K taps, the
// kernel row being its slice (block_position's third factor). Its halo is one
// input row, 4 * K accumulators a thread: the small shapes' K times more
// blocks, with every output's channels still summed in one order (ascending,
// per subset, the subsets added in ascending order), so either form, for any
// dtype, gives the same bits.
//
// The warps' partial sums are then added in parallel, in rounds: every warp
// stores SHARE * SUBSETS units of its sums (a unit: one tap of one row, two
// pixels) to shared memory, and each warp adds up SHARE of those units over
// the subsets, ascending, and stores them. A fixed order: results are bitwise
// reproducible. (SHARE is CARAFE_MASKS_QUAD_SHARE, from
// carafe_cupy/_kernels/constants.py, by which the planner sizes shared memory.)

template <typename scalar_t, int K, int ROWS>
__device__ void carafe_backward_masks_quad_impl(
    const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ features,
    scalar_t* __restrict__ grad_masks, const carafe_geometry g, const strides4 gs,
    const strides4 fs, const strides4 ms, index_t channels_per_block, int channel_batch) {
    typedef typename storage<scalar_t>::acc_t acc_t;
    typedef typename storage<scalar_t>::raw_t raw_t;
    static_assert(sizeof(acc_t) == sizeof(float), "quads accumulate in fp32 (no fp64 build)");
    static_assert(ROWS == K || ROWS == 1, "every kernel row, or one");
    constexpr int TAPS = ROWS * K;  // the taps this block sums
    constexpr int R = (K - 1) / 2;
    constexpr int LANES = CARAFE_TILE_THREADS_X;
    constexpr int TILE_W = 2 * LANES;
    constexpr int PITCH = tile_pitch<K, 2>();
    // channels a warp stages per barrier pair: more for the whole kernel at
    // K = 5 (its loads in flight over more sums, within its one block an SM);
    // two where registers are the kernel's occupancy (K = 3, the one-row form)
    constexpr int BATCH = ROWS == K && K == 5 ? CARAFE_MASKS_QUAD_BATCH : CARAFE_MASKS_BATCH;
    constexpr int SUBSETS = CARAFE_MASKS_SUBSETS;
    constexpr int CHANNEL_PLANE = ROWS * PITCH;  // ROWS input rows serve both output rows
    constexpr int SLOTS = (CHANNEL_PLANE + LANES - 1) / LANES;  // staged elements per lane
    constexpr int SUBSET_PLANE = BATCH * CHANNEL_PLANE;
    CARAFE_DYNAMIC_SHARED(acc_t, halo);
    const index_t s = g.scale_factor;
    const index_t out_height = g.height * s, out_width = g.width * s;
    const index_t channels_per_group = g.channels / g.group_size;
    const tile_position p = block_position((out_width + TILE_W - 1) / TILE_W, out_height / 2,
                                           K / ROWS, g.group_size);
    const int first_row = ROWS == K ? 0 : (int)p.slice;  // the block's first kernel row
    const index_t x0 = p.tile_x * TILE_W, y = p.tile_y * 2;
    const index_t x = x0 + (index_t)threadIdx.x * 2;
    const int subset = threadIdx.y, lane = threadIdx.x;
    const bool inside = x < out_width;  // x and out_width are even: x + 1 is inside too
    const index_t row0 = y / s - R + first_row, col0 = x0 / s - R;

    acc_t sum[2][2][TAPS];  // [row][column][tap]
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 2; ++b)
#pragma unroll
            for (int t = 0; t < TAPS; ++t) sum[a][b][t] = 0;

    const index_t c_begin = p.group * channels_per_group;
    const index_t chunk = channels_per_block;  // channels per subset
    const index_t my_begin = c_begin + subset * chunk;
    // this subset's channels: chunk, fewer in the group's last subsets
    const index_t my_count = max((index_t)0, min(chunk, c_begin + channels_per_group - my_begin));

    // A channel's halo, ROWS rows of PITCH, is staged as SLOTS runs of 32
    // elements. This lane's element of each run, in the subset's first channel,
    // is found once, clamped into the image so that every load is valid and
    // needs no predicate: an element outside the image feeds only the sums of
    // taps that lie outside it, which are set to zero at the end. The channel
    // loop adds a channel offset to each address. (A subset with no channels,
    // where the group has fewer channels than subsets, reads the group's first
    // channel, masked.)
    const scalar_t* first_plane =
        features + p.n * fs.n + (my_count > 0 ? my_begin : c_begin) * fs.c;
    const scalar_t* quad_source[SLOTS];
#pragma unroll
    for (int slot = 0; slot < SLOTS; ++slot) {
        const int e = lane + slot * LANES;
        const int r = e / PITCH, k_col = e - r * PITCH;
        const index_t row = min(max(row0 + r, (index_t)0), g.height - 1);
        const index_t col = min(max(col0 + k_col, (index_t)0), g.width - 1);
        quad_source[slot] = first_plane + (row * fs.h + col * fs.w);
    }
    // lanes past the image's right edge read its last pixel pair's grad_output
    // (their sums are never stored)
    const index_t go_x = inside ? x : out_width - 2;
    const scalar_t* go_row0 = grad_output + p.n * gs.n +
                              (my_count > 0 ? my_begin : c_begin) * gs.c + y * gs.h + go_x * gs.w;
    const scalar_t* go_row1 = go_row0 + gs.h;
    acc_t* own = halo + subset * SUBSET_PLANE;
    const acc_t* window = own + (int)(x / s - x0 / s);

    // One batch's raw halo elements and grad_output values, loaded a batch
    // ahead of use. A channel past the subset's end re-reads the subset's first
    // channel, which the masked loop below zeroes (it may hold Inf or NaN).
    raw_t staged[BATCH][SLOTS];
    acc_t grad[BATCH][2][2];
    // the next channel, and its offsets in bytes (no scaling in the loop)
    index_t next = 0, next_step = 0, go_step = 0;
    const index_t feature_bytes = fs.c * (index_t)sizeof(scalar_t);
    const index_t go_bytes = gs.c * (index_t)sizeof(scalar_t);
    auto at = [](const scalar_t* base, index_t bytes) {
        return reinterpret_cast<const scalar_t*>(reinterpret_cast<const char*>(base) + bytes);
    };
    auto load_batch = [&]() {
#pragma unroll
        for (int cc = 0; cc < BATCH; ++cc) {
            const bool channel_ok = next + cc < my_count;
            const index_t feature_step = channel_ok ? next_step : 0;
            const index_t go_offset = channel_ok ? go_step : 0;
#pragma unroll
            for (int slot = 0; slot < SLOTS; ++slot)
                staged[cc][slot] = storage<scalar_t>::load_raw(at(quad_source[slot], feature_step));
            pair_access<scalar_t>::load(at(go_row0, go_offset), grad[cc][0][0], grad[cc][0][1]);
            pair_access<scalar_t>::load(at(go_row1, go_offset), grad[cc][1][0], grad[cc][1][1]);
            next_step += feature_bytes;
            go_step += go_bytes;
        }
        next += BATCH;
    };
    // A batch: staged (its planes ANDed with keep), summed while the next loads.
    auto sum_batch = [&](const unsigned (&keep)[BATCH]) {
        __syncwarp();  // the warp's previous quad batch fully read
#pragma unroll
        for (int cc = 0; cc < BATCH; ++cc)
#pragma unroll
            for (int slot = 0; slot < SLOTS; ++slot)
                if (slot < SLOTS - 1 || lane + slot * LANES < CHANNEL_PLANE)  // the last run's tail
                    own[cc * CHANNEL_PLANE + lane + slot * LANES] = __uint_as_float(
                        __float_as_uint(storage<scalar_t>::widen(staged[cc][slot])) & keep[cc]);
        acc_t current[BATCH][2][2];
#pragma unroll
        for (int cc = 0; cc < BATCH; ++cc)
#pragma unroll
            for (int a = 0; a < 2; ++a)
#pragma unroll
                for (int b = 0; b < 2; ++b)
                    current[cc][a][b] = __uint_as_float(__float_as_uint(grad[cc][a][b]) & keep[cc]);
        load_batch();  // the next batch, in flight during the sums (issued first)
        __syncwarp();  // the quad batch staged
#pragma unroll
        for (int cc = 0; cc < BATCH; ++cc) {
            const acc_t* w = window + cc * CHANNEL_PLANE;
#pragma unroll
            for (int i = 0; i < ROWS; ++i)
#pragma unroll
                for (int j = 0; j < K; ++j) {
                    const acc_t value = w[i * PITCH + j];
#pragma unroll
                    for (int a = 0; a < 2; ++a)
#pragma unroll
                        for (int b = 0; b < 2; ++b)
                            sum[a][b][i * K + j] += current[cc][a][b] * value;
                }
        }
    };
    (void)channel_batch;  // == BATCH, passed for the launch record and the cost model
    // Every warp runs the same trips (uniform loops for the warp barriers). The
    // block's last subset holds the fewest channels, `common`: every warp's
    // first whole batches of those need no mask (all of them, where the group's
    // channels fill every subset).
    const index_t common =
        max((index_t)0, min(chunk, channels_per_group - (index_t)(SUBSETS - 1) * chunk));
    const index_t unmasked = common - common % channel_batch;
    load_batch();
    unsigned all[BATCH];
#pragma unroll
    for (int cc = 0; cc < BATCH; ++cc) all[cc] = ~0u;
    for (index_t c0 = 0; c0 < unmasked; c0 += channel_batch) sum_batch(all);
    // The rest, where the group's last subsets may run past their channels: a
    // channel past the end has grad 0 and a zero halo, so adding 0 * 0 leaves
    // every sum unchanged.
    for (index_t c0 = unmasked; c0 < chunk; c0 += channel_batch) {
        unsigned keep[BATCH];
#pragma unroll
        for (int cc = 0; cc < BATCH; ++cc) keep[cc] = c0 + cc < my_count ? ~0u : 0u;
        sum_batch(keep);
    }

    // Units of the reduction: unit = tap * 2 + row, two pixels (columns) each.
    constexpr int UNITS = 2 * TAPS;
    constexpr int ROUND_UNITS = CARAFE_MASKS_QUAD_SHARE * SUBSETS;
    constexpr int ROUNDS = (UNITS + ROUND_UNITS - 1) / ROUND_UNITS;
    static_assert(ROUND_UNITS * SUBSETS * LANES * 2 <= 48 * 1024 / 4, "reduction space");
    float2* partial = reinterpret_cast<float2*>(halo);
    // A warp adds up its round's two units, one tap's two rows: tap round *
    // SUBSETS + subset. A tap outside the input has no effect on the output: its
    // gradient is exactly zero, not grad_output * (zero halo), which is NaN for
    // Inf. Which of the block's kernel rows and columns lie inside, as bits,
    // found once.
    static_assert(CARAFE_MASKS_QUAD_SHARE == 2, "a warp's units of a round are one tap");
    const index_t centre_y = y / s, centre_x = x / s;
    unsigned rows_inside = 0, cols_inside = 0;
#pragma unroll
    for (int i = 0; i < ROWS; ++i) {
        const index_t row = centre_y + first_row + i - R;
        rows_inside |= row >= 0 && row < g.height ? 1u << i : 0u;
    }
#pragma unroll
    for (int j = 0; j < K; ++j) {
        const index_t col = centre_x + j - R;
        cols_inside |= col >= 0 && col < g.width ? 1u << j : 0u;
    }
    // this warp's first tap's gradient at (y, x), its taps SUBSETS channels apart
    scalar_t* tap_out = grad_masks + p.n * ms.n +
                        (p.group * K * K + first_row * K + subset) * ms.c + y * ms.h + x * ms.w;
    const index_t tap_step = SUBSETS * ms.c;
#pragma unroll
    for (int round = 0; round < ROUNDS; ++round) {
        // the halo (round 0) or the last round's units are no longer read
        __syncthreads();
#pragma unroll
        for (int v = 0; v < ROUND_UNITS; ++v) {
            const int unit = round * ROUND_UNITS + v;
            if (unit < UNITS)
                partial[(v * SUBSETS + subset) * LANES + lane] =
                    make_float2(sum[unit % 2][0][unit / 2], sum[unit % 2][1][unit / 2]);
        }
        __syncthreads();  // every subset's units of this round stored
        const int t = round * SUBSETS + subset;
        if (t < TAPS && inside) {
            const bool tap_in = (rows_inside >> (t / K)) & (cols_inside >> (t % K)) & 1u;
#pragma unroll
            for (int row = 0; row < 2; ++row) {
                const int v = subset * CARAFE_MASKS_QUAD_SHARE + row;
                float2 total = partial[v * SUBSETS * LANES + lane];
#pragma unroll
                for (int other = 1; other < SUBSETS; ++other) {
                    const float2 part = partial[(v * SUBSETS + other) * LANES + lane];
                    total.x += part.x;
                    total.y += part.y;
                }
                if (!tap_in) total = make_float2(0, 0);
                pair_access<scalar_t>::store(tap_out + row * ms.h, total.x, total.y);
            }
        }
        tap_out += tap_step;
    }
}
