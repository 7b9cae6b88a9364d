// Tiled CARAFE kernels: grad_features register-tiled for s = 2. Part of
// carafe_tiled.cuh, after carafe_tiled_grad_features.cuh (whose helpers it uses).
#pragma once

// A thread owns QUAD adjacent input pixels of one row at one sub-pixel (a, b):
// their 4 * K * K masks stay in registers, and each grad_output value read from
// shared memory serves every pixel of the quad whose window covers it, so a row
// of K + QUAD - 1 reads feeds QUAD * K multiply-adds. A warp is 8 quads of one
// input row times the 4 sub-pixels (lane = quad * 4 + a * 2 + b), so a pixel's
// 4 partial sums sit in 4 neighbouring lanes and are added with shuffles.
constexpr int CARAFE_FEATURES_QUAD_PIXELS = 4;          // input pixels per thread
constexpr int CARAFE_FEATURES_QUAD_SCALE = 2;    // the one scale factor these kernels take
constexpr int CARAFE_FEATURES_QUAD_TILE_COLS =   // input columns of a tile: one warp's row
    CARAFE_TILE_THREADS_X / (CARAFE_FEATURES_QUAD_SCALE * CARAFE_FEATURES_QUAD_SCALE) * CARAFE_FEATURES_QUAD_PIXELS;
constexpr int CARAFE_FEATURES_QUAD_TILE_ROWS = CARAFE_TILE_THREADS_Y / 2;  // one input row a warp
constexpr int CARAFE_FEATURES_QUAD_THREADS = CARAFE_TILE_THREADS_X * CARAFE_FEATURES_QUAD_TILE_ROWS;

// Blocks per SM (the launch bounds): as many as 4 * K * K masks in registers
// allow; fp16 and bf16 at K = 5 two, as at three their conversions would spill.
template <typename scalar_t, int K>
constexpr int carafe_features_quad_blocks_min = K <= 3 ? 4 : sizeof(scalar_t) == 4 ? 3 : 2;

// The 4 sub-pixel planes (a, b) of a staged channel or mask tap lie at a * A + b * B,
// multiples of 4 (16-byte aligned rows) with B = 16 and A = 8 (mod 32), B at least
// a plane: a quarter warp's 16-byte reads (2 quads, 4 columns apart, times the 4
// planes) cover 8 distinct groups of 4 banks, and a warp's stores of 32
// consecutive columns (16 centres in each b plane) 32 distinct banks.
__host__ __device__ constexpr int features_quad_b_pitch(int plane) {
    return plane + ((16 - plane % 32) + 32) % 32;
}
__host__ __device__ constexpr int features_quad_a_pitch(int plane) {
    return 2 * features_quad_b_pitch(plane) + 8;
}

// Centre columns of a halo row, rounded up to 4 so every row starts 16-byte aligned.
__host__ __device__ constexpr int features_quad_centre_pitch(int centre_cols) {
    return (centre_cols + 3) / 4 * 4;
}

// The halo's staging slots. A warp stages one halo row in each of its ROWS
// passes (row group + i * ROW_GROUPS): lane c its columns c and c + 32, so the
// loads cover consecutive columns (whole sectors) and the stores, 16 centres of
// each sub-pixel column, 32 distinct banks. The columns past 64 (EXTRA_COLS of
// each row) are one element a thread. Offsets step by fixed strides, shared
// indices by compile-time ones; the total is the halo over the threads, 9 each
// at K = 5.
template <typename scalar_t, int K>
struct features_quad_slots {
    static constexpr int S = CARAFE_FEATURES_QUAD_SCALE, WARP = 32;
    static constexpr int CENTRE_ROWS = CARAFE_FEATURES_QUAD_TILE_ROWS + K - 1;
    static constexpr int CENTRE_COLS = CARAFE_FEATURES_QUAD_TILE_COLS + K - 1;
    static constexpr int CENTRE_PITCH = features_quad_centre_pitch(CENTRE_COLS);
    static constexpr int B_PITCH = features_quad_b_pitch(CENTRE_ROWS * CENTRE_PITCH);
    static constexpr int A_PITCH = features_quad_a_pitch(CENTRE_ROWS * CENTRE_PITCH);
    static constexpr int CHANNEL_PLANE = S * A_PITCH;
    static constexpr int HALO_ROWS = CENTRE_ROWS * S, HALO_COLS = CENTRE_COLS * S;
    static constexpr int THREADS = CARAFE_FEATURES_QUAD_THREADS;
    static constexpr int ROW_GROUPS = THREADS / WARP;
    static constexpr int ROWS = (HALO_ROWS + ROW_GROUPS - 1) / ROW_GROUPS;  // per warp
    static constexpr int SPANS = 2;                                         // 32 columns each
    static constexpr int EXTRA_COLS = HALO_COLS - SPANS * WARP;
    static_assert(ROW_GROUPS % S == 0, "a thread's rows share one sub-pixel row");
    static_assert(EXTRA_COLS >= 0 && HALO_ROWS * EXTRA_COLS <= THREADS, "one extra a thread");
    static_assert(ROWS * SPANS < 32, "the rows and the extra fit one bit mask");

    const scalar_t* first;  // this thread's first row, left column, channel 0
    index_t row_step;       // ROW_GROUPS rows of grad_output
    index_t span_step;      // WARP columns of grad_output
    index_t extra_offset;   // this thread's extra element, from `first`
    int at;                 // shared index of row 0; row i: at + i * ROW_STEP
    int extra_at;
    unsigned int loaded;    // bit SPANS * i + span: in the halo and the image; bit EXTRA_BIT: the extra
    unsigned int staged;    // bit i: row i is in the halo; bit EXTRA_BIT: the extra
    static constexpr int EXTRA_BIT = ROWS * SPANS;

    __device__ __forceinline__ void locate(const scalar_t* channels, const strides4& gs,
                                           int thread, index_t row0, index_t col0,
                                           index_t out_height, index_t out_width) {
        const int column = thread % WARP, group = thread / WARP;
        first = channels + (row0 + group) * gs.h + (col0 + column) * gs.w;
        row_step = ROW_GROUPS * gs.h;
        span_step = WARP * gs.w;
        at = (group % S) * A_PITCH + (column % S) * B_PITCH + (group / S) * CENTRE_PITCH +
             column / S;
        loaded = staged = 0;
#pragma unroll
        for (int i = 0; i < ROWS; ++i) {
            const int r = group + i * ROW_GROUPS;
            const index_t y = row0 + r;
            if (r >= HALO_ROWS) continue;
            staged |= 1u << i;
#pragma unroll
            for (int span = 0; span < SPANS; ++span) {
                const index_t x = col0 + column + span * WARP;
                if (y >= 0 && y < out_height && x >= 0 && x < out_width)
                    loaded |= 1u << (SPANS * i + span);
            }
        }
        constexpr int EXTRA_WIDTH = EXTRA_COLS > 0 ? EXTRA_COLS : 1;  // K = 1: no extras
        const int extra_r = thread / EXTRA_WIDTH, extra_c = SPANS * WARP + thread % EXTRA_WIDTH;
        const index_t y = row0 + extra_r, x = col0 + extra_c;
        extra_offset = (index_t)(extra_r - group) * gs.h + (index_t)(extra_c - column) * gs.w;
        extra_at = (extra_r % S) * A_PITCH + (extra_c % S) * B_PITCH +
                   (extra_r / S) * CENTRE_PITCH + extra_c / S;
        if (EXTRA_COLS > 0 && extra_r < HALO_ROWS) {
            staged |= 1u << EXTRA_BIT;
            if (y >= 0 && y < out_height && x >= 0 && x < out_width) loaded |= 1u << EXTRA_BIT;
        }
    }

    // Channel cc of the batch, from this thread's first row of it, into halo plane cc:
    // every load before any store.
    template <typename acc_t>
    __device__ __forceinline__ void stage_channel(acc_t* halo, const scalar_t* row,
                                                  int cc) const {
        constexpr int ROW_STEP = ROW_GROUPS / S * CENTRE_PITCH;  // ROW_GROUPS rows down
        constexpr int SPAN_STEP = WARP / S;                      // WARP columns on
        acc_t extra = 0;
        if (loaded >> EXTRA_BIT & 1u) extra = storage<scalar_t>::load(row + extra_offset);
        acc_t value[ROWS][SPANS];
#pragma unroll
        for (int i = 0; i < ROWS; ++i, row += row_step)
#pragma unroll
            for (int span = 0; span < SPANS; ++span) {
                value[i][span] = 0;
                if (loaded >> (SPANS * i + span) & 1u)
                    value[i][span] = storage<scalar_t>::load(row + span * span_step);
            }
        acc_t* plane = halo + cc * CHANNEL_PLANE;
#pragma unroll
        for (int i = 0; i < ROWS; ++i)
            if (staged >> i & 1u)
#pragma unroll
                for (int span = 0; span < SPANS; ++span)
                    plane[at + i * ROW_STEP + span * SPAN_STEP] = value[i][span];
        if (staged >> EXTRA_BIT & 1u) plane[extra_at] = extra;
    }

    // Channels [0, count) of the batch (`channel_offset` past channel 0) into the
    // halo planes. One channel at a time where registers are tight (its 2 * ROWS
    // loads in flight beside 4 * K * K masks); with two blocks per SM (fp16 and
    // bf16 at K = 5) the batch unrolled, so every channel's loads go out before
    // their conversions and stores, which would otherwise wait in turn.
    template <typename acc_t>
    __device__ __forceinline__ void stage(acc_t* halo, index_t channel_offset, index_t stride,
                                          int count) const {
        const scalar_t* rows = first + channel_offset;
        if constexpr (carafe_features_quad_blocks_min<scalar_t, K> == 2) {
#pragma unroll
            for (int cc = 0; cc < CARAFE_CHANNEL_BATCH_MAX; ++cc) {
                if (cc >= count) break;
                stage_channel(halo, rows + cc * stride, cc);
            }
        } else {
#pragma unroll 1
            for (int cc = 0; cc < count; ++cc) stage_channel(halo, rows + cc * stride, cc);
        }
    }
};

// The masks of a tile, one tap row at a time through shared memory: the block
// loads tap row i's K taps over the tile's 2 * TILE_ROWS x 2 * TILE_COLS mask
// positions with consecutive threads on consecutive columns (whole sectors, where
// a thread's own taps, s columns apart for 4 pixels, would fetch 4 times the
// sectors), stores them as [tap][sub-pixel][row][pixel], and each thread reads
// its quad's 4 masks of a tap with one 16-byte load. Zero where the tap's centre
// pixel lies outside the image, as features_tap_weights.
template <typename scalar_t, int K>
struct features_quad_masks {
    static constexpr int S = CARAFE_FEATURES_QUAD_SCALE, Q = CARAFE_FEATURES_QUAD_PIXELS;
    static constexpr int COLS = CARAFE_FEATURES_QUAD_TILE_COLS * S;  // mask columns of a tile
    static constexpr int ROWS = CARAFE_FEATURES_QUAD_TILE_ROWS * S;
    static constexpr int THREADS = CARAFE_FEATURES_QUAD_THREADS;
    static constexpr int ROW_GROUPS = THREADS / COLS;     // rows a pass of the block loads
    static constexpr int PASSES = ROWS / ROW_GROUPS;      // per tap
    // A tap's sub-pixel planes, spaced as the halo's.
    static constexpr int PLANE = CARAFE_FEATURES_QUAD_TILE_ROWS * CARAFE_FEATURES_QUAD_TILE_COLS;
    static constexpr int B_PITCH = features_quad_b_pitch(PLANE);
    static constexpr int A_PITCH = features_quad_a_pitch(PLANE);
    static constexpr int TAP_PLANE = S * A_PITCH;
    static_assert(THREADS % COLS == 0 && ROWS % ROW_GROUPS == 0 && ROW_GROUPS % S == 0,
                  "whole mask rows a pass, each thread on one sub-pixel row");

    template <typename acc_t>
    static __device__ __forceinline__ void load(acc_t (&weight)[Q][K * K], acc_t* shared,
                                                const scalar_t* masks, const strides4& ms,
                                                const carafe_geometry& g, const tile_position& p,
                                                index_t h0, index_t w0, int thread, int sub_y,
                                                int sub_x,
                                                int local_h, int local_w) {
        constexpr int TAPS = K * K, R = (K - 1) / 2;
        const int column = thread % COLS, row_first = thread / COLS;
        // tap (0, 0) of this thread's first mask; tap (i, j) is i * row_step + j * col_step on
        const scalar_t* origin = masks + p.n * ms.n + (p.group * TAPS) * ms.c +
                                 ((h0 + R) * S + row_first) * ms.h + ((w0 + R) * S + column) * ms.w;
        const index_t row_step = K * ms.c - S * ms.h, col_step = ms.c - S * ms.w;
        const index_t pass_step = ROW_GROUPS * ms.h;
        // bit j: tap column j's centre is inside the image; bit i * PASSES + m: tap row
        // i's centre of pass m (tested once, not per tap row)
        unsigned int columns_in = 0, rows_in = 0;
#pragma unroll
        for (int j = 0; j < K; ++j) {
            const index_t centre_w = w0 + column / S + R - j;
            if (centre_w >= 0 && centre_w < g.width) columns_in |= 1u << j;
        }
#pragma unroll
        for (int i = 0; i < K; ++i)
#pragma unroll
            for (int m = 0; m < PASSES; ++m) {
                const index_t centre_h = h0 + (row_first + m * ROW_GROUPS) / S + R - i;
                if (centre_h >= 0 && centre_h < g.height) rows_in |= 1u << (i * PASSES + m);
            }
        const int stored = row_first % S * A_PITCH + column % S * B_PITCH +
                           row_first / S * CARAFE_FEATURES_QUAD_TILE_COLS + column / S;
        const int mine = sub_y * A_PITCH + sub_x * B_PITCH + local_h * CARAFE_FEATURES_QUAD_TILE_COLS + local_w;
        // unrolled: with a run-time i, weight[q][i * K + j] would live in local memory
#pragma unroll
        for (int i = 0; i < K; ++i) {
            const scalar_t* tap_row = origin + i * row_step;
            acc_t value[K][PASSES];
#pragma unroll
            for (int j = 0; j < K; ++j)
#pragma unroll
                for (int m = 0; m < PASSES; ++m) {
                    value[j][m] = 0;
                    if ((rows_in >> (i * PASSES + m)) & (columns_in >> j) & 1u)
                        value[j][m] = storage<scalar_t>::load(tap_row + j * col_step +
                                                              m * pass_step);
                }
            __syncthreads();  // the previous tap row read (or, first, nothing yet)
#pragma unroll
            for (int j = 0; j < K; ++j)
#pragma unroll
                for (int m = 0; m < PASSES; ++m)
                    shared[j * TAP_PLANE + stored +
                           m * (ROW_GROUPS / S) * CARAFE_FEATURES_QUAD_TILE_COLS] = value[j][m];
            __syncthreads();
#pragma unroll
            for (int j = 0; j < K; ++j) {
                const float4 four = *reinterpret_cast<const float4*>(shared + j * TAP_PLANE + mine);
                weight[0][i * K + j] = four.x;
                weight[1][i * K + j] = four.y;
                weight[2][i * K + j] = four.z;
                weight[3][i * K + j] = four.w;
            }
        }
    }
};

// The 4 partial sums of a quad's pixels at this lane's sub-pixel in, the total
// of one pixel (2 * b + a of the quad) out: two shuffle rounds, each keeping half
// the pixels and adding the partner lane's half. Every pixel's total is
// (p(0,0) + p(0,1)) + (p(1,0) + p(1,1)) whichever lane computes it (addition
// commutes exactly), so results do not depend on scheduling.
template <typename acc_t>
__device__ __forceinline__ acc_t features_quad_total(const acc_t (&sum)[CARAFE_FEATURES_QUAD_PIXELS], int a,
                                                      int b) {
    constexpr unsigned int WARP = 0xffffffffu;
    // across b (lane ^ 1): b = 0 keeps pixels 0 and 1, b = 1 keeps 2 and 3
    const acc_t send0 = b ? sum[0] : sum[2], send1 = b ? sum[1] : sum[3];
    const acc_t keep0 = b ? sum[2] : sum[0], keep1 = b ? sum[3] : sum[1];
    const acc_t row0 = keep0 + __shfl_xor_sync(WARP, send0, 1);
    const acc_t row1 = keep1 + __shfl_xor_sync(WARP, send1, 1);
    // across a (lane ^ 2): a = 0 keeps pixel 2b, a = 1 keeps 2b + 1
    const acc_t send = a ? row0 : row1, keep = a ? row1 : row0;
    return keep + __shfl_xor_sync(WARP, send, 2);
}

// Block: 32 x 8 threads over a tile of CARAFE_FEATURES_QUAD_TILE_COLS x
// CARAFE_FEATURES_QUAD_TILE_ROWS input pixels; s = 2, K <= 5, 4-byte accumulators
// (the planner's features_quad_plan). The sums match the one-pixel kernel's per
// sub-pixel (taps in the same order), and only their reduction differs.
template <typename scalar_t, int K>
__device__ void carafe_backward_features_quad_impl(
    const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ masks,
    scalar_t* __restrict__ grad_features, const carafe_geometry g, const strides4 gs,
    const strides4 ms, const strides4 fs, index_t channels_per_block, int channel_batch) {
    typedef typename storage<scalar_t>::acc_t acc_t;
    typedef features_quad_slots<scalar_t, K> slots_t;
    constexpr int TAPS = K * K, S = CARAFE_FEATURES_QUAD_SCALE, Q = CARAFE_FEATURES_QUAD_PIXELS;
    constexpr int R = (K - 1) / 2;
    constexpr int CENTRE_PITCH = slots_t::CENTRE_PITCH;
    // a window row's K + Q - 1 values, read 4 at a time from its 16-byte aligned start
    constexpr int WINDOW_VECTORS = (K + Q - 1 + 3) / 4;
    static_assert(sizeof(acc_t) == 4, "16-byte reads of 4 accumulators");
    CARAFE_DYNAMIC_SHARED(acc_t, shared);
    const index_t out_height = g.height * S, out_width = g.width * S;
    const index_t channels_per_group = g.channels / g.group_size;
    const index_t slices = (channels_per_group + channels_per_block - 1) / channels_per_block;
    const tile_position p = block_position(
        (g.width + CARAFE_FEATURES_QUAD_TILE_COLS - 1) / CARAFE_FEATURES_QUAD_TILE_COLS,
        (g.height + CARAFE_FEATURES_QUAD_TILE_ROWS - 1) / CARAFE_FEATURES_QUAD_TILE_ROWS, slices, g.group_size);
    const index_t w0 = p.tile_x * CARAFE_FEATURES_QUAD_TILE_COLS, h0 = p.tile_y * CARAFE_FEATURES_QUAD_TILE_ROWS;
    const int sub = threadIdx.x % (S * S), sub_y = sub / S, sub_x = sub % S;
    const int local_w = threadIdx.x / (S * S) * Q, local_h = threadIdx.y;
    const index_t h = h0 + local_h, w = w0 + local_w;  // the quad's first pixel
    const index_t centre_row0 = h0 - (K - 1 - R), centre_col0 = w0 - (K - 1 - R);
    const int thread = threadIdx.y * blockDim.x + threadIdx.x;

    acc_t weight[Q][TAPS];
    features_quad_masks<scalar_t, K>::load(weight, shared, masks, ms, g, p, h0, w0, thread, sub_y,
                                           sub_x, local_h, local_w);

    acc_t* halo = shared;
    slots_t slots;
    const index_t group_begin = p.group * channels_per_group;
    const index_t c_begin = group_begin + p.slice * channels_per_block;
    const index_t c_end = min(c_begin + channels_per_block, group_begin + channels_per_group);
    slots.locate(grad_output + p.n * gs.n + c_begin * gs.c, gs, thread, centre_row0 * S,
                 centre_col0 * S, out_height, out_width);
    // Window of row i, column d (d = q + K - 1 - j for tap (i, j) of pixel q).
    const int base = sub_y * slots_t::A_PITCH + sub_x * slots_t::B_PITCH + (local_h + K - 1) * CENTRE_PITCH + local_w;
    const int mine = 2 * sub_x + sub_y;  // the quad's pixel this lane stores
    const bool stores = h < g.height && w + mine < g.width;
    scalar_t* out = grad_features + p.n * fs.n + c_begin * fs.c + h * fs.h + (w + mine) * fs.w;
    index_t staged_offset = 0;
    for (index_t c0 = c_begin; c0 < c_end; c0 += channel_batch) {
        const int count = (int)min((index_t)channel_batch, c_end - c0);
        __syncthreads();  // previous batch's halo fully read
        slots.stage(halo, staged_offset, gs.c, count);
        staged_offset += channel_batch * gs.c;
        __syncthreads();
#pragma unroll 1
        for (int cc = 0; cc < count; ++cc) {
            const acc_t* window = halo + cc * slots_t::CHANNEL_PLANE + base;
            acc_t sum[Q];
#pragma unroll
            for (int q = 0; q < Q; ++q) sum[q] = 0;
#pragma unroll
            for (int i = 0; i < K; ++i) {
                acc_t value[4 * WINDOW_VECTORS];
#pragma unroll
                for (int v = 0; v < WINDOW_VECTORS; ++v) {
                    const float4 four =
                        *reinterpret_cast<const float4*>(window - i * CENTRE_PITCH + 4 * v);
                    value[4 * v] = four.x;
                    value[4 * v + 1] = four.y;
                    value[4 * v + 2] = four.z;
                    value[4 * v + 3] = four.w;
                }
#pragma unroll
                for (int d = K + Q - 2; d >= 0; --d)
#pragma unroll
                    for (int q = 0; q < Q; ++q) {
                        const int j = q + K - 1 - d;
                        if (j >= 0 && j < K) sum[q] += weight[q][i * K + j] * value[d];
                    }
            }
            const acc_t total = features_quad_total(sum, sub_y, sub_x);
            if (stores) storage<scalar_t>::store(out, total);
            out += fs.c;
        }
    }
}
