// Tiled CARAFE kernels: the forward with 2 x 2 output pixels per thread (even s),
// and the fused forward (FROM_LOGITS) with the same tile.
// Part of carafe_tiled.cuh, which includes it after carafe_tiled_forward.cuh.
#pragma once

// For even s, the output pixels (y, x), (y, x + 1), (y + 1, x) and (y + 1, x + 1),
// with y and x even, come from one input pixel and read the same K x K window:
// each window value read from shared memory serves four sums, and a thread
// holds the 4 * K * K masks of its pixels in registers for its whole channel
// slice. A block is 32 x CARAFE_FORWARD_QUAD_ROWS threads over an output tile
// of 64 x (2 * CARAFE_FORWARD_QUAD_ROWS) pixels: the pair kernel's tile and
// halo, with half the threads.
//
// The halo is double buffered: each thread loads the next channel batch's
// elements into registers before it sums the current batch, and stores them
// to the other buffer after, so the loads are in flight during the FMAs and a
// batch needs one block barrier. A pixel's sum runs over the taps in the
// order of the one-pixel kernel, so the two agree bit for bit.
//
// FROM_LOGITS: the four pixels' masks are the softmax of their K * K logits,
// normalised in registers by softmax_in_place (the one-pixel fused kernel's
// sequence), so the fused results are that kernel's bits too. Pixel (a, b) of
// the quad is sub-pixel (sub_y + a, sub_x + b) of the same input pixel: its
// logits are channel a * s + b past pixel (0, 0)'s, at the same position.

// The staging slots: each thread owns fixed elements of the [ROWS_MAX][PITCH]
// halo for the whole channel loop, their addresses and image tests found
// once. Loads are split from stores, so a batch can be loaded ahead; each
// slot's address steps by the channel stride from one channel to the next. A
// channel's plane holds COUNT * THREADS elements, so every thread stores every
// slot (those past the halo are zero and never read): a warp's stores are
// whole, consecutive words.
template <int K>
struct forward_quad_slots {
    static constexpr int THREADS = CARAFE_TILE_THREADS_X * CARAFE_FORWARD_QUAD_ROWS;
    static constexpr int PITCH = tile_pitch<K, 2>();
    // even s: the tile's 2 * ROWS output rows span at most ROWS input rows
    static constexpr int ROWS_MAX = CARAFE_FORWARD_QUAD_ROWS + K;
    static constexpr int HALO = ROWS_MAX * PITCH;  // the widest halo (s = 2)
    static constexpr int COUNT = (HALO + THREADS - 1) / THREADS;
    static constexpr int PLANE = COUNT * THREADS;  // a channel's plane, for every s
    static constexpr int BATCH = CARAFE_CHANNEL_BATCH_MAX;
    static_assert(COUNT * BATCH <= 32, "one bit a slot and channel");
    const void* source[COUNT];  // the slot's element in the batch's first channel
    // bit cc * COUNT + i: slot i is inside the halo and the image (every channel
    // cc of a batch alike)
    unsigned int loaded;

    template <typename scalar_t>
    __device__ __forceinline__ void locate(const scalar_t* channel, const strides4& st,
                                           index_t row0, index_t col0, int rows, int cols,
                                           index_t height, index_t width) {
        const int thread = threadIdx.y * CARAFE_TILE_THREADS_X + threadIdx.x;
        unsigned int inside = 0;
#pragma unroll
        for (int i = 0; i < COUNT; ++i) {
            const int within = thread + i * THREADS;
            const int r = within / PITCH, k = within - r * PITCH;
            const index_t row = row0 + r, col = col0 + k;
            source[i] = channel + (row * st.h + col * st.w);
            if (r < rows && k < cols && row >= 0 && row < height && col >= 0 && col < width)
                inside |= 1u << i;
        }
        loaded = 0;
#pragma unroll
        for (int cc = 0; cc < BATCH; ++cc) loaded |= inside << (cc * COUNT);
    }

    // Every slot steps `step` elements (to the next batch).
    template <typename scalar_t>
    __device__ __forceinline__ void advance(index_t step) {
#pragma unroll
        for (int i = 0; i < COUNT; ++i) source[i] = static_cast<const scalar_t*>(source[i]) + step;
    }

    // The raw elements of channels [0, count) (channel stride `stride`); zero
    // bits for the others and outside the image. One bit mask for the batch,
    // so the loads need no branch.
    template <typename scalar_t>
    __device__ __forceinline__ void load(typename storage<scalar_t>::raw_t (&value)[BATCH][COUNT],
                                         index_t stride, int count) const {
        const int live_channels = count < 0 ? 0 : count < BATCH ? count : BATCH;
        const unsigned int live = loaded & ((1u << (live_channels * COUNT)) - 1u);
#pragma unroll
        for (int i = 0; i < COUNT; ++i) {
            const scalar_t* element = static_cast<const scalar_t*>(source[i]);
#pragma unroll
            for (int cc = 0; cc < BATCH; ++cc, element += stride) {
                value[cc][i] = 0;
                if (live >> (cc * COUNT + i) & 1u)
                    value[cc][i] = storage<scalar_t>::load_raw(element);
            }
        }
    }

    // Channels [0, count) of `value` into halo planes [0, count) (pitch PLANE);
    // FULL: count is BATCH.
    template <typename scalar_t, bool FULL, typename acc_t>
    __device__ __forceinline__ void store(acc_t* halo,
                                          const typename storage<scalar_t>::raw_t (
                                              &value)[BATCH][COUNT],
                                          int count) const {
        const int thread = threadIdx.y * CARAFE_TILE_THREADS_X + threadIdx.x;
#pragma unroll
        for (int cc = 0; cc < BATCH; ++cc) {
            if (!FULL && cc >= count) break;
#pragma unroll
            for (int i = 0; i < COUNT; ++i)
                halo[cc * PLANE + thread + i * THREADS] = storage<scalar_t>::widen(value[cc][i]);
        }
    }
};

// One channel's four sums over the taps, in the one-pixel kernel's order,
// stored as two pairs (rows y and y + 1).
template <typename scalar_t, int K, int PITCH, typename acc_t>
__device__ __forceinline__ void forward_quad_channel(const acc_t (&weight)[2][2][K * K],
                                                     const acc_t* window, scalar_t* out,
                                                     index_t row_step) {
    acc_t sum[2][2];
#pragma unroll
    for (int a = 0; a < 2; ++a) sum[a][0] = sum[a][1] = 0;
#pragma unroll
    for (int i = 0; i < K; ++i)
#pragma unroll
        for (int j = 0; j < K; ++j) {
            const acc_t value = window[i * PITCH + j];
#pragma unroll
            for (int a = 0; a < 2; ++a)
#pragma unroll
                for (int b = 0; b < 2; ++b) sum[a][b] += weight[a][b][i * K + j] * value;
        }
    pair_access<scalar_t>::store(out, sum[0][0], sum[0][1]);
    pair_access<scalar_t>::store(out + row_step, sum[1][0], sum[1][1]);
}

template <typename scalar_t, int K, bool FROM_LOGITS>
__device__ void carafe_forward_quad_impl(const scalar_t* __restrict__ features,
                                         const scalar_t* __restrict__ masks,
                                         scalar_t* __restrict__ output, const carafe_geometry g,
                                         const strides4 fs, const strides4 ms, const strides4 os,
                                         index_t channels_per_block, int channel_batch) {
    typedef typename storage<scalar_t>::acc_t acc_t;
    typedef typename storage<scalar_t>::raw_t raw_t;
    constexpr int TAPS = K * K;
    constexpr int R = (K - 1) / 2;
    CARAFE_DYNAMIC_SHARED(acc_t, halo);
    // Sizes and coordinates in 32 bits: the launcher runs this kernel only when
    // the output's sides and the channel count are below 2^31. Offsets stay 64-bit.
    const unsigned s = (unsigned)g.scale_factor;
    const int out_height = (int)g.height * (int)s, out_width = (int)g.width * (int)s;
    constexpr unsigned tile_w = CARAFE_TILE_THREADS_X * 2, tile_h = CARAFE_FORWARD_QUAD_ROWS * 2;
    const unsigned channels_per_group = (unsigned)g.channels / (unsigned)g.group_size;
    const unsigned per_block = (unsigned)channels_per_block;
    const tile_position p = block_position_32((out_width + tile_w - 1) / tile_w,
                                              (out_height + tile_h - 1) / tile_h,
                                              (channels_per_group + per_block - 1) / per_block,
                                              (unsigned)g.group_size);
    const unsigned x0 = (unsigned)p.tile_x * tile_w, y0 = (unsigned)p.tile_y * tile_h;
    const int y = (int)(y0 + threadIdx.y * 2), x = (int)(x0 + threadIdx.x * 2);
    // y, x, out_height and out_width are even: the pixel below and the one to
    // the right are inside whenever (y, x) is
    const bool inside = y < out_height && x < out_width;
    constexpr int PITCH = tile_pitch<K, 2>();
    const int cols = halo_extent(tile_w, (int)s, K), rows = halo_extent(tile_h, (int)s, K);
    const int centre_y = (int)((unsigned)y / s), centre_x = (int)((unsigned)x / s);
    const int tile_row0 = (int)(y0 / s), tile_col0 = (int)(x0 / s);
    const int row = centre_y - tile_row0, col = centre_x - tile_col0;

    // Masks [row][column][tap]. Masks: an outside tap's weight is never loaded (a
    // zero instead), and meets the zero halo, as in the one-pixel kernel. Logits:
    // every tap is loaded (the softmax runs over all of them), as there.
    acc_t weight[2][2][TAPS];
    if constexpr (FROM_LOGITS) {
        // pixel_shuffle: tap t of sub-pixel (a, b) is channel ((g*TAPS + t)*s + a)*s + b
        const int sub_y = y - centre_y * (int)s, sub_x = x - centre_x * (int)s;
        const scalar_t* tap_logit = logit_address<TAPS>(masks, ms, p.n, p.group, 0, centre_y,
                                                        sub_y, centre_x, sub_x, s);
        const index_t tap_step = (index_t)(s * s) * ms.c, row_step = (index_t)s * ms.c;
        // a pixel at a time, its logits loaded and normalised before the next
        // pixel's: fewer values live at once
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
            for (int b = 0; b < 2; ++b) {
                const scalar_t* logit = tap_logit + a * row_step + b * ms.c;
#pragma unroll
                for (int t = 0; t < TAPS; ++t, logit += tap_step) {
                    weight[a][b][t] = 0;
                    if (inside) weight[a][b][t] = storage<scalar_t>::load(logit);
                }
                if (inside) softmax_in_place<TAPS>(weight[a][b]);
            }
    } else {
        const scalar_t* tap_mask =
            masks + p.n * ms.n + (p.group * TAPS) * ms.c + y * ms.h + x * ms.w;
#pragma unroll
        for (int t = 0; t < TAPS; ++t, tap_mask += ms.c) {
            const bool tap_in_image = (unsigned)(centre_y + t / K - R) < (unsigned)g.height &&
                                      (unsigned)(centre_x + t % K - R) < (unsigned)g.width;
#pragma unroll
            for (int a = 0; a < 2; ++a) weight[a][0][t] = weight[a][1][t] = 0;
            if (inside && tap_in_image) {
                pair_access<scalar_t>::load(tap_mask, weight[0][0][t], weight[0][1][t]);
                pair_access<scalar_t>::load(tap_mask + ms.h, weight[1][0][t], weight[1][1][t]);
            }
        }
    }

    const index_t group_begin = p.group * channels_per_group;
    const index_t c_begin = group_begin + p.slice * channels_per_block;
    const index_t c_end = min(c_begin + channels_per_block, group_begin + channels_per_group);
    using slots_t = forward_quad_slots<K>;
    constexpr int PLANE = slots_t::PLANE, BATCH = slots_t::BATCH;
    slots_t slots;
    slots.locate(features + p.n * fs.n + c_begin * fs.c, fs, tile_row0 - R, tile_col0 - R, rows,
                 cols, g.height, g.width);
    scalar_t* out = output + p.n * os.n + c_begin * os.c + y * os.h + x * os.w;
    const int window_offset = row * PITCH + col;
    // Channel counts in 32 bits (the launcher keeps them below 2^31).
    const int channel_count = (int)(c_end - c_begin);
    channel_batch = BATCH;  // what the planner passes (the launch record reads it)
    const index_t batch_step = channel_batch * fs.c;
    raw_t staged[BATCH][slots_t::COUNT];
    slots.template load<scalar_t>(staged, fs.c, channel_count);
    acc_t* current = halo;
    // Whole batches: each loads the next batch (whole, partial or none) ahead.
    int c0 = 0;
    for (; c0 + CARAFE_CHANNEL_BATCH_MAX <= channel_count; c0 += channel_batch) {
        // This buffer was last read two batches ago, before every thread
        // passed the previous batch's barrier.
        slots.template store<scalar_t, true>(current, staged, BATCH);
        __syncthreads();  // the batch staged
        slots.template advance<scalar_t>(batch_step);
        slots.template load<scalar_t>(staged, fs.c, channel_count - c0 - channel_batch);
        const acc_t* window = current + window_offset;
        current = current == halo ? halo + BATCH * PLANE : halo;
        if (!inside) continue;
#pragma unroll
        for (int cc = 0; cc < BATCH; ++cc, out += os.c)
            forward_quad_channel<scalar_t, K, PITCH>(weight, window + cc * PLANE, out, os.h);
    }
    // The last, partial batch (loaded by the last whole one, or before the loop).
    const int tail_count = channel_count - c0;
    if (tail_count > 0) {
        slots.template store<scalar_t, false>(current, staged, tail_count);
        __syncthreads();  // the partial batch staged
        if (!inside) return;
        const acc_t* window = current + window_offset;
#pragma unroll 1
        for (int cc = 0; cc < tail_count; ++cc, window += PLANE, out += os.c)
            forward_quad_channel<scalar_t, K, PITCH>(weight, window, out, os.h);
    }
}
