// Tiled CARAFE kernels: forward (and the fused forward).
// Part of carafe_tiled.cuh, which includes it after the shared helpers.
#pragma once

// ---------------------------------------------------------------- forward

// The forward's halo staging. Each thread owns fixed element slots of the
// [rows][PITCH] plane for the whole channel loop, so the image test and the
// 64-bit in-plane offset are computed once; a staged element then costs one
// predicated load and one shared store, and a batch's loads are all issued
// before its stores. Slots past `cols` or outside the image hold zero.
template <int K>
struct forward_halo_slots {
    static constexpr int THREADS = CARAFE_TILE_THREADS_X * CARAFE_TILE_THREADS_Y;
    static constexpr int ROWS_MAX = CARAFE_TILE_THREADS_Y + K - 1;  // s = 1, the widest
    static constexpr int COUNT = (ROWS_MAX * tile_pitch<K, 1>() + THREADS - 1) / THREADS;
    index_t offset[COUNT];  // row * st.h + col * st.w of the slot's pixel
    unsigned int loaded;    // bit i: slot i is in the plane and inside the image
    unsigned int staged;    // bit i: slot i is in the plane

    __device__ __forceinline__ void locate(const strides4& st, index_t row0, index_t col0,
                                           int rows, int cols, index_t height, index_t width) {
        constexpr int PITCH = tile_pitch<K, 1>();
        const int thread = threadIdx.y * CARAFE_TILE_THREADS_X + threadIdx.x;
        loaded = staged = 0;
#pragma unroll
        for (int i = 0; i < COUNT; ++i) {
            const int within = thread + i * THREADS;
            const int r = within / PITCH, k = within - (within / PITCH) * PITCH;
            const index_t row = row0 + r, col = col0 + k;
            offset[i] = row * st.h + col * st.w;
            if (r < rows) staged |= 1u << i;
            if (r < rows && k < cols && row >= 0 && row < height && col >= 0 && col < width)
                loaded |= 1u << i;
        }
    }

    // Channels [0, count) of `channels` (channel stride st.c) into halo planes
    // [0, count); plane pitch rows * PITCH.
    template <typename scalar_t, typename acc_t>
    __device__ __forceinline__ void stage(acc_t* halo, const scalar_t* channels, index_t stride,
                                          int count, int plane) const {
        const int thread = threadIdx.y * CARAFE_TILE_THREADS_X + threadIdx.x;
        acc_t value[CARAFE_CHANNEL_BATCH_MAX][COUNT];
#pragma unroll
        for (int cc = 0; cc < CARAFE_CHANNEL_BATCH_MAX; ++cc) {
            const scalar_t* channel = channels + cc * stride;
#pragma unroll
            for (int i = 0; i < COUNT; ++i) {
                value[cc][i] = load_or_zero(channel + offset[i], cc < count && (loaded >> i & 1u));
            }
        }
#pragma unroll
        for (int cc = 0; cc < CARAFE_CHANNEL_BATCH_MAX; ++cc) {
            if (cc >= count) break;
#pragma unroll
            for (int i = 0; i < COUNT; ++i)
                if (staged >> i & 1u) halo[cc * plane + thread + i * THREADS] = value[cc][i];
        }
    }
};


// One output pixel a thread; FROM_LOGITS: the fused forward, the pixel's masks
// the softmax of its logits (pixel_shuffle indexing).
template <typename scalar_t, int K, bool FROM_LOGITS>
__device__ void carafe_forward_tiled_impl(const scalar_t* __restrict__ features,
                                          const scalar_t* __restrict__ masks,
                                          scalar_t* __restrict__ output, const carafe_geometry g,
                                          const strides4 fs, const strides4 ms,
                                          const strides4 os, index_t channels_per_block,
                                          int channel_batch) {
    typedef typename storage<scalar_t>::acc_t acc_t;
    constexpr int TAPS = K * K;
    constexpr int R = (K - 1) / 2;
    CARAFE_DYNAMIC_SHARED(acc_t, halo);
    // Sizes and coordinates in 32 bits: the launcher runs this kernel only when
    // the output's sides and the channel count are below 2^31. Offsets stay 64-bit.
    const unsigned s = (unsigned)g.scale_factor;
    const int out_height = (int)g.height * (int)s, out_width = (int)g.width * (int)s;
    constexpr unsigned tile_w = CARAFE_TILE_THREADS_X, tile_h = CARAFE_TILE_THREADS_Y;
    const unsigned channels_per_group = (unsigned)g.channels / (unsigned)g.group_size;
    const unsigned per_block = (unsigned)channels_per_block;
    const tile_position p = block_position_32((out_width + tile_w - 1) / tile_w,
                                              (out_height + tile_h - 1) / tile_h,
                                              (channels_per_group + per_block - 1) / per_block,
                                              (unsigned)g.group_size);
    const unsigned x0 = (unsigned)p.tile_x * tile_w, y0 = (unsigned)p.tile_y * tile_h;
    const int y = (int)(y0 + threadIdx.y), x = (int)(x0 + threadIdx.x);
    const bool inside = y < out_height && x < out_width;
    constexpr int PITCH = tile_pitch<K, 1>();
    const int cols = halo_extent(tile_w, (int)s, K), rows = halo_extent(tile_h, (int)s, K);
    const int centre_y = (int)((unsigned)y / s), centre_x = (int)((unsigned)x / s);
    const int tile_row0 = (int)(y0 / s), tile_col0 = (int)(x0 / s);
    const int row = centre_y - tile_row0, col = centre_x - tile_col0;
    const int sub_y = y - centre_y * (int)s, sub_x = x - centre_x * (int)s;
    // Tap t's mask (or logit) is a fixed channel stride past tap 0's: one
    // 64-bit add per tap instead of a 64-bit multiply.
    const scalar_t* tap_mask;
    index_t tap_step;
    if constexpr (FROM_LOGITS) {  // pixel_shuffle: tap t is channel ((g*TAPS + t)*s + a)*s + b
        tap_mask = logit_address<TAPS>(masks, ms, p.n, p.group, 0, centre_y, sub_y, centre_x,
                                       sub_x, s);
        tap_step = (index_t)(s * s) * ms.c;
    } else {
        tap_mask = masks + p.n * ms.n + (p.group * TAPS) * ms.c + y * ms.h + x * ms.w;
        tap_step = ms.c;
    }
    // Taps outside the input are skipped, not multiplied by the zero halo, so an
    // Inf or NaN mask there leaves the output finite (as the reference does).
    // 32-bit unsigned tests (negative wraps high); K row and K column tests in all.
    // Masks: an outside tap's weight is never loaded (a zero instead). Logits:
    // every tap is loaded (the softmax runs over all of them); an outside tap's
    // probability then meets the zero halo, which adds +0 (a finite weight) or
    // nothing new (a NaN or Inf logit makes every probability NaN anyway).
    acc_t weight[TAPS];
#pragma unroll
    for (int t = 0; t < TAPS; ++t, tap_mask += tap_step) {
        const bool tap_in_image = (unsigned)(centre_y + t / K - R) < (unsigned)g.height &&
                                  (unsigned)(centre_x + t % K - R) < (unsigned)g.width;
        weight[t] = 0;
        if constexpr (FROM_LOGITS) {
            if (inside) weight[t] = storage<scalar_t>::load(tap_mask);
        } else if (inside && tap_in_image) {
            weight[t] = storage<scalar_t>::load(tap_mask);
        }
    }
    if (FROM_LOGITS && inside) softmax_in_place<TAPS>(weight);

    const index_t group_begin = p.group * channels_per_group;
    const index_t c_begin = group_begin + p.slice * channels_per_block;
    const index_t c_end = min(c_begin + channels_per_block, group_begin + channels_per_group);
    const int plane = rows * PITCH;
    forward_halo_slots<K> slots;
    slots.locate(fs, tile_row0 - R, tile_col0 - R, rows, cols, g.height, g.width);
    const scalar_t* channel = features + p.n * fs.n + c_begin * fs.c;
    // Strength-reduced: the output pointer and the window advance by one
    // channel / plane per channel, so the tap loop has no address multiplies.
    scalar_t* out = output + p.n * os.n + c_begin * os.c + y * os.h + x * os.w;
    const acc_t* const window0 = halo + row * PITCH + col;
    // Channel counts in 32 bits (the launcher keeps them below 2^31).
    const int channel_count = (int)(c_end - c_begin);
    for (int c0 = 0; c0 < channel_count; c0 += channel_batch) {
        const int count = min(channel_batch, channel_count - c0);
        __syncthreads();  // previous batch fully read
        slots.stage(halo, channel, fs.c, count, plane);
        channel += channel_batch * fs.c;
        __syncthreads();
        if (!inside) continue;
        const acc_t* window = window0;
#pragma unroll 1
        for (int cc = 0; cc < count; ++cc, window += plane, out += os.c) {
            acc_t sum = 0;
#pragma unroll
            for (int i = 0; i < K; ++i)
#pragma unroll
                for (int j = 0; j < K; ++j) sum += weight[i * K + j] * window[i * PITCH + j];
            storage<scalar_t>::store(out, sum);
        }
    }
}

