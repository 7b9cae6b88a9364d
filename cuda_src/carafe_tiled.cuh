// Tiled CARAFE kernels: the default wherever they apply (see _planner.py).
//
// A block owns a tile of output pixels (32 x 8 threads). The tile's mask
// values stay in registers for the whole channel loop (K*K per pixel, K a
// template parameter), and the input window of each channel (the tile's halo,
// zero outside the image) is staged in shared memory, a batch of channels at a
// time. Features, masks and outputs therefore cross DRAM about once each.
//
//   forward:         out tile, masks in registers, feature halo in smem.
//   grad_masks:      one output row per block, K*K sums per pixel in
//                    registers; the 8 warps split the group's channels, each
//                    staging its own feature halo (warp barriers only), and
//                    their partial sums are added in a fixed order.
//   grad_features:   a tile of input pixels; each of its s*s sub-pixel threads
//                    holds the K*K masks that reach its input pixel, sums over
//                    the grad_output halo in smem (padded sub-pixel planes: no
//                    bank conflicts), and the s*s partial sums are added in a
//                    fixed order through shared memory.
// No atomics, no scratch memory: every result has one writer and a fixed
// summation order, so results are bitwise reproducible.
//
// PAIR = 2 (even s only): a thread owns two neighbouring output pixels of the
// same input pixel, so each window value read from smem serves both, and
// masks / outputs / grad_output / grad_masks move as 2-element vectors. The
// launcher picks it only when those tensors are x-contiguous and aligned.
//
// FROM_LOGITS: masks are computed on the fly from the content encoder's raw
// output (N, G*K*K*s*s, H, W): pixel_shuffle indexing plus a softmax over the
// K*K taps of each group, so normalised masks never reach memory.
#pragma once
#include "carafe_common.cuh"

#ifndef CARAFE_DYNAMIC_SHARED
#define CARAFE_DYNAMIC_SHARED(T, name)                                  \
    extern __shared__ __align__(16) unsigned char name##_raw_[]; \
    T* name = reinterpret_cast<T*>(name##_raw_)
#endif

#define CARAFE_TILE_THREADS_X 32
#define CARAFE_TILE_THREADS_Y 8
// Channels staged per barrier pair; the launcher may pick fewer (runtime
// argument) when the halo would not fit in shared memory.
#define CARAFE_CHANNEL_BATCH_MAX 4

__device__ __forceinline__ float accumulate_exp(float value) { return expf(value); }
__device__ __forceinline__ double accumulate_exp(double value) { return exp(value); }

// Halo extent along one axis for `outputs` consecutive output pixels: their
// input pixels span at most ceil((outputs - 1) / s) + 1 values, plus K - 1.
__device__ __forceinline__ int halo_extent(int outputs, int scale, int kernel_size) {
    return (outputs - 1 + scale - 1) / scale + kernel_size;
}

// Two neighbouring elements as one aligned access (x-contiguous, even offset).
template <typename scalar_t>
struct pair_access;

template <>
struct pair_access<float> {
    static __device__ __forceinline__ void load(const float* p, float& a, float& b) {
        const float2 v = *reinterpret_cast<const float2*>(p);
        a = v.x;
        b = v.y;
    }
    static __device__ __forceinline__ void store(float* p, float a, float b) {
        *reinterpret_cast<float2*>(p) = make_float2(a, b);
    }
};

template <typename bits_t>
struct pair_access_16 {
    static __device__ __forceinline__ void load(const bits_t* p, float& a, float& b) {
        const unsigned int v = *reinterpret_cast<const unsigned int*>(p);
        bits_t low, high;
        low.bits = (unsigned short)(v & 0xFFFFu);
        high.bits = (unsigned short)(v >> 16);
        a = storage<bits_t>::load(&low);
        b = storage<bits_t>::load(&high);
    }
    static __device__ __forceinline__ void store(bits_t* p, float a, float b) {
        bits_t low, high;
        storage<bits_t>::store(&low, a);
        storage<bits_t>::store(&high, b);
        *reinterpret_cast<unsigned int*>(p) = (unsigned int)low.bits | ((unsigned int)high.bits << 16);
    }
};
template <>
struct pair_access<half_bits> : pair_access_16<half_bits> {};
template <>
struct pair_access<bfloat16_bits> : pair_access_16<bfloat16_bits> {};

// Position of a block: tile column, tile row, channel slice, group, image.
struct tile_position {
    index_t tile_x, tile_y, slice, group, n;
};

// Block index -> tile position in 32-bit arithmetic: exact whenever the grid is
// (every factor is at most gridDim.x < 2^31), and free of 64-bit division calls.
__device__ __forceinline__ tile_position block_position_32(unsigned tiles_x, unsigned tiles_y,
                                                           unsigned slices, unsigned groups) {
    unsigned rest = blockIdx.x;
    tile_position p;
    p.tile_x = rest % tiles_x;
    rest /= tiles_x;
    p.tile_y = rest % tiles_y;
    rest /= tiles_y;
    p.slice = rest % slices;
    rest /= slices;
    p.group = rest % groups;
    p.n = rest / groups;
    return p;
}

// The same for index_t callers (the launcher keeps every factor below 2^31).
__device__ __forceinline__ tile_position block_position(index_t tiles_x, index_t tiles_y,
                                                        index_t slices, index_t groups) {
    return block_position_32((unsigned)tiles_x, (unsigned)tiles_y, (unsigned)slices,
                             (unsigned)groups);
}

// Softmax over the taps of one pixel, in place (max subtracted first). Every
// fused kernel uses this exact sequence so they agree bitwise on the masks.
template <int TAPS, typename acc_t>
__device__ __forceinline__ void softmax_in_place(acc_t (&values)[TAPS]) {
    acc_t largest = values[0];
#pragma unroll
    for (int t = 1; t < TAPS; ++t) largest = values[t] > largest ? values[t] : largest;
    acc_t total = 0;
#pragma unroll
    for (int t = 0; t < TAPS; ++t) {
        values[t] = accumulate_exp(values[t] - largest);
        total += values[t];
    }
    const acc_t inverse = acc_t(1) / total;  // one division: fp64 division is a call
#pragma unroll
    for (int t = 0; t < TAPS; ++t) values[t] = values[t] * inverse;
}

// Raw logit for (group, tap) at output pixel (h * s + a, w * s + b):
// pixel_shuffle indexing. Callers pass the split coordinates so no 64-bit
// division runs inside the tap loops.
template <int TAPS, typename scalar_t>
__device__ __forceinline__ const scalar_t* logit_address(const scalar_t* logits,
                                                         const strides4& st, index_t n,
                                                         index_t group, int tap, index_t h,
                                                         int a, index_t w, int b, index_t s) {
    const index_t channel = ((group * TAPS + tap) * s + a) * s + b;
    return logits + n * st.n + channel * st.c + h * st.h + w * st.w;
}

// Stage `count` channels' windows [row0, row0 + rows) x [col0, col0 + cols) of a
// plane set into shared memory (row pitch `pitch`), zero outside the image or
// past `count`.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage_halo(acc_t* halo, const scalar_t* base, const strides4& st,
                                           index_t first_channel, int count, int batch,
                                           index_t row0, index_t col0, int rows, int cols,
                                           int pitch, index_t height, index_t width) {
    const int plane = rows * cols;
    const int total = batch * plane;
    const int thread = threadIdx.y * blockDim.x + threadIdx.x;
    const int threads = blockDim.x * blockDim.y;
    for (int e = thread; e < total; e += threads) {
        const int cc = e / plane;
        const int within = e - cc * plane;
        const int r = within / cols;
        const int k = within - r * cols;
        const index_t row = row0 + r;
        const index_t col = col0 + k;
        acc_t value = 0;
        if (cc < count && row >= 0 && row < height && col >= 0 && col < width) {
            value = storage<scalar_t>::load(base + (first_channel + cc) * st.c + row * st.h +
                                            col * st.w);
        }
        halo[(cc * rows + r) * pitch + k] = value;
    }
}

// Row pitch of the forward / grad_masks halo: the widest halo of a tile
// (s = 1, or s = 2 for pairs), so tap offsets are compile-time constants.
__device__ __forceinline__ bool tap_inside(index_t row, index_t col, const carafe_geometry& g) {
    return row >= 0 && row < g.height && col >= 0 && col < g.width;
}

template <int K, int PAIR>
__device__ __forceinline__ constexpr int tile_pitch() {
    return (CARAFE_TILE_THREADS_X * PAIR - 1 + PAIR - 1) / PAIR + K;
}

// ---------------------------------------------------------------- forward

// The forward's halo staging. Each thread owns fixed element slots of the
// [rows][PITCH] plane for the whole channel loop, so the image test and the
// 64-bit in-plane offset are computed once; a staged element then costs one
// predicated load and one shared store, and a batch's loads are all issued
// before its stores. Slots past `cols` or outside the image hold zero.
template <int K, int PAIR>
struct forward_halo_slots {
    static constexpr int THREADS = CARAFE_TILE_THREADS_X * CARAFE_TILE_THREADS_Y;
    // PAIR = 2 needs s >= 2, which halves the halo's rows.
    static constexpr int ROWS_MAX = (CARAFE_TILE_THREADS_Y - 1 + PAIR - 1) / PAIR + K;
    static constexpr int COUNT = (ROWS_MAX * tile_pitch<K, PAIR>() + THREADS - 1) / THREADS;
    index_t offset[COUNT];  // row * st.h + col * st.w of the slot's pixel
    unsigned int loaded;    // bit i: slot i is in the plane and inside the image
    unsigned int staged;    // bit i: slot i is in the plane

    __device__ __forceinline__ void locate(const strides4& st, index_t row0, index_t col0,
                                           int rows, int cols, index_t height, index_t width) {
        constexpr int PITCH = tile_pitch<K, PAIR>();
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
                value[cc][i] = 0;
                if (cc < count && (loaded >> i & 1u))
                    value[cc][i] = storage<scalar_t>::load(channel + offset[i]);
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


template <typename scalar_t, int K, int PAIR, bool FROM_LOGITS>
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
    constexpr unsigned tile_w = CARAFE_TILE_THREADS_X * PAIR, tile_h = CARAFE_TILE_THREADS_Y;
    const unsigned channels_per_group = (unsigned)g.channels / (unsigned)g.group_size;
    const unsigned per_block = (unsigned)channels_per_block;
    const tile_position p = block_position_32((out_width + tile_w - 1) / tile_w,
                                              (out_height + tile_h - 1) / tile_h,
                                              (channels_per_group + per_block - 1) / per_block,
                                              (unsigned)g.group_size);
    const unsigned x0 = (unsigned)p.tile_x * tile_w, y0 = (unsigned)p.tile_y * tile_h;
    const int y = (int)(y0 + threadIdx.y), x = (int)(x0 + threadIdx.x * PAIR);
    const bool inside = y < out_height && x < out_width;  // PAIR: x + 1 < width too (s even)
    constexpr int PITCH = tile_pitch<K, PAIR>();
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
    acc_t weight[PAIR][TAPS];
#pragma unroll
    for (int t = 0; t < TAPS; ++t, tap_mask += tap_step) {
        if (!inside) {
#pragma unroll
            for (int q = 0; q < PAIR; ++q) weight[q][t] = 0;
        } else if constexpr (FROM_LOGITS) {
#pragma unroll
            for (int q = 0; q < PAIR; ++q) weight[q][t] = storage<scalar_t>::load(tap_mask + q * ms.c);
        } else if constexpr (PAIR == 2) {
            pair_access<scalar_t>::load(tap_mask, weight[0][t], weight[PAIR - 1][t]);
        } else {
            weight[0][t] = storage<scalar_t>::load(tap_mask);
        }
    }
    if (FROM_LOGITS && inside) {
#pragma unroll
        for (int q = 0; q < PAIR; ++q) softmax_in_place<TAPS>(weight[q]);
    }
    // Taps outside the input are skipped, not multiplied by the zero halo, so an
    // Inf or NaN mask there leaves the output finite (as the reference does).
    // 32-bit unsigned tests (negative wraps high); K row and K column tests in all.
#pragma unroll
    for (int t = 0; t < TAPS; ++t) {
        const bool tap_in_image = (unsigned)(centre_y + t / K - R) < (unsigned)g.height &&
                                  (unsigned)(centre_x + t % K - R) < (unsigned)g.width;
        if (!tap_in_image) {
#pragma unroll
            for (int q = 0; q < PAIR; ++q) weight[q][t] = 0;
        }
    }

    const index_t group_begin = p.group * channels_per_group;
    const index_t c_begin = group_begin + p.slice * channels_per_block;
    const index_t c_end = min(c_begin + channels_per_block, group_begin + channels_per_group);
    const int plane = rows * PITCH;
    forward_halo_slots<K, PAIR> slots;
    slots.locate(fs, tile_row0 - R, tile_col0 - R, rows, cols, g.height, g.width);
    const scalar_t* channel = features + p.n * fs.n + c_begin * fs.c;
    for (index_t c0 = c_begin; c0 < c_end; c0 += channel_batch) {
        const int count = (int)min((index_t)channel_batch, c_end - c0);
        __syncthreads();  // previous batch fully read
        slots.stage(halo, channel, fs.c, count, plane);
        channel += channel_batch * fs.c;
        __syncthreads();
        if (!inside) continue;
#pragma unroll 1
        for (int cc = 0; cc < count; ++cc) {
            const acc_t* window = halo + cc * plane + row * PITCH + col;
            acc_t sum[PAIR];
#pragma unroll
            for (int q = 0; q < PAIR; ++q) sum[q] = 0;
#pragma unroll
            for (int i = 0; i < K; ++i)
#pragma unroll
                for (int j = 0; j < K; ++j) {
                    const acc_t value = window[i * PITCH + j];
#pragma unroll
                    for (int q = 0; q < PAIR; ++q) sum[q] += weight[q][i * K + j] * value;
                }
            scalar_t* out = output + p.n * os.n + (c0 + cc) * os.c + y * os.h + x * os.w;
            if constexpr (PAIR == 2) {
                pair_access<scalar_t>::store(out, sum[0], sum[PAIR - 1]);
            } else {
                storage<scalar_t>::store(out, sum[0]);
            }
        }
    }
}

// ---------------------------------------------------------------- grad_masks

// grad_masks (or, FROM_LOGITS, grad of the raw logits through the softmax):
// K*K sums per output pixel over all channels of the group.
//
// A block owns one output row of 32 * PAIR pixels; each of its 8 warps takes a
// contiguous subset of `channels_per_block` channels of the group (ascending)
// and sums them for that row, so a block walks an eighth of the channels and
// the grid has a block per output row. Each warp stages its own channels'
// halo (K rows, the same for every s) in its own part of shared memory, so
// the channel loop needs warp barriers only; every global load of a batch
// (halo and grad_output) is issued before the first store. The warps' partial
// sums are then added in ascending subset order through shared memory: a
// fixed order, so the result is bitwise reproducible.
#define CARAFE_MASKS_BATCH 2  // channels per warp staged per warp barrier pair
#define CARAFE_MASKS_SUBSETS CARAFE_TILE_THREADS_Y

template <typename scalar_t, int K, int PAIR, bool FROM_LOGITS>
__device__ void carafe_backward_masks_tiled_impl(
    const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ features,
    const scalar_t* __restrict__ logits, scalar_t* __restrict__ grad_masks,
    const carafe_geometry g, const strides4 gs, const strides4 fs, const strides4 ls,
    const strides4 ms, index_t channels_per_block, int channel_batch) {
    typedef typename storage<scalar_t>::acc_t acc_t;
    constexpr int TAPS = K * K;
    constexpr int R = (K - 1) / 2;
    constexpr int LANES = CARAFE_TILE_THREADS_X;
    constexpr int PITCH = tile_pitch<K, PAIR>();
    constexpr int BATCH = CARAFE_MASKS_BATCH, SUBSETS = CARAFE_MASKS_SUBSETS;
    // One output row reads K input rows whatever s is: halo_extent(1, s, K) == K.
    constexpr int CHANNEL_PLANE = K * PITCH;
    constexpr int SLOTS = (CHANNEL_PLANE + LANES - 1) / LANES;  // staged elements per lane
    constexpr int SUBSET_PLANE = BATCH * CHANNEL_PLANE;
    CARAFE_DYNAMIC_SHARED(acc_t, halo);
    const index_t s = g.scale_factor;
    const index_t out_height = g.height * s, out_width = g.width * s;
    const int tile_w = LANES * PAIR;
    const index_t channels_per_group = g.channels / g.group_size;
    const tile_position p =
        block_position((out_width + tile_w - 1) / tile_w, out_height, 1, g.group_size);
    const index_t x0 = p.tile_x * tile_w, y = p.tile_y;
    const index_t x = x0 + (index_t)threadIdx.x * PAIR;
    const int subset = threadIdx.y, lane = threadIdx.x;
    const bool inside = x < out_width;
    const int cols = halo_extent(tile_w, (int)s, K);
    const index_t row0 = y / s - R, col0 = x0 / s - R;

    // A channel's halo, K rows of PITCH, is staged as SLOTS runs of 32
    // consecutive elements; this lane's element of each run, its offset from
    // the halo's first row and whether it lies in the image are computed once,
    // so staging an element is an add, a test, a load and a store.
    index_t element_offset[SLOTS];
    unsigned elements_ok = 0;
#pragma unroll
    for (int slot = 0; slot < SLOTS; ++slot) {
        const int e = lane + slot * LANES;
        const int r = e / PITCH, k_col = e - r * PITCH;
        const index_t in_row = row0 + r, in_col = col0 + k_col;
        const bool ok = e < CHANNEL_PLANE && k_col < cols && in_row >= 0 &&
                        in_row < g.height && in_col >= 0 && in_col < g.width;
        elements_ok |= ok ? 1u << slot : 0u;
        element_offset[slot] = (index_t)r * fs.h + in_col * fs.w;
    }

    acc_t sum[PAIR][TAPS];
#pragma unroll
    for (int q = 0; q < PAIR; ++q)
#pragma unroll
        for (int t = 0; t < TAPS; ++t) sum[q][t] = 0;

    const index_t c_begin = p.group * channels_per_group;
    const index_t c_end = c_begin + channels_per_group;
    const index_t chunk = channels_per_block;  // channels per subset
    const index_t my_begin = c_begin + subset * chunk;
    const scalar_t* feature_rows = features + p.n * fs.n + row0 * fs.h;
    const scalar_t* go_base = grad_output + p.n * gs.n + y * gs.h + x * gs.w;
    acc_t* own = halo + subset * SUBSET_PLANE;
    const acc_t* window = own + (int)(x / s - x0 / s);
    (void)channel_batch;  // == BATCH, passed for the launch record and the cost model
    for (index_t c0 = 0; c0 < chunk; c0 += channel_batch) {
        acc_t staged[BATCH][SLOTS];
        acc_t grad[BATCH][PAIR];
#pragma unroll
        for (int cc = 0; cc < BATCH; ++cc) {
            const index_t channel = my_begin + c0 + cc;
            const bool channel_ok = c0 + cc < chunk && channel < c_end;
            const scalar_t* plane = feature_rows + channel * fs.c;
#pragma unroll
            for (int slot = 0; slot < SLOTS; ++slot) {
                staged[cc][slot] = 0;
                if (channel_ok && (elements_ok >> slot & 1u))
                    staged[cc][slot] = storage<scalar_t>::load(plane + element_offset[slot]);
            }
#pragma unroll
            for (int q = 0; q < PAIR; ++q) grad[cc][q] = 0;
            if (inside && channel_ok) {
                const scalar_t* go = go_base + channel * gs.c;
                if constexpr (PAIR == 2) {
                    pair_access<scalar_t>::load(go, grad[cc][0], grad[cc][PAIR - 1]);
                } else {
                    grad[cc][0] = storage<scalar_t>::load(go);
                }
            }
        }
        __syncwarp();  // the warp's previous batch fully read
#pragma unroll
        for (int cc = 0; cc < BATCH; ++cc)
#pragma unroll
            for (int slot = 0; slot < SLOTS; ++slot)
                if (SLOTS * LANES == CHANNEL_PLANE || lane + slot * LANES < CHANNEL_PLANE)
                    own[cc * CHANNEL_PLANE + lane + slot * LANES] = staged[cc][slot];
        __syncwarp();
        // Channels past the subset's end have grad 0 and a zero halo: adding
        // 0 * 0 leaves every sum unchanged, so no test is needed here.
#pragma unroll
        for (int cc = 0; cc < BATCH; ++cc) {
            const acc_t* w = window + cc * CHANNEL_PLANE;
#pragma unroll
            for (int i = 0; i < K; ++i)
#pragma unroll
                for (int j = 0; j < K; ++j) {
                    const acc_t value = w[i * PITCH + j];
#pragma unroll
                    for (int q = 0; q < PAIR; ++q) sum[q][i * K + j] += grad[cc][q] * value;
                }
        }
    }
    // Subset 0 adds the other subsets' sums, ascending, one kernel row at a time
    // (the halo space is reused: SUBSETS * K * PAIR * 32 <= its size).
    static_assert(K * PAIR * LANES <= SUBSET_PLANE, "reduction space");
    acc_t* partial = halo;
#pragma unroll
    for (int i = 0; i < K; ++i) {
        __syncthreads();
        if (subset != 0) {
#pragma unroll
            for (int j = 0; j < K; ++j)
#pragma unroll
                for (int q = 0; q < PAIR; ++q)
                    partial[((subset * K + j) * PAIR + q) * CARAFE_TILE_THREADS_X + lane] =
                        sum[q][i * K + j];
        }
        __syncthreads();
        if (subset == 0) {
#pragma unroll
            for (int other = 1; other < SUBSETS; ++other)
#pragma unroll
                for (int j = 0; j < K; ++j)
#pragma unroll
                    for (int q = 0; q < PAIR; ++q)
                        sum[q][i * K + j] +=
                            partial[((other * K + j) * PAIR + q) * CARAFE_TILE_THREADS_X + lane];
        }
    }
    if (subset != 0 || !inside) return;  // after the last barrier
    {
        // A tap outside the input has no effect on the output: its gradient is
        // exactly zero, not grad_output * (zero halo), which is NaN for Inf.
        const index_t tap_centre_y = y / s, tap_centre_x = x / s;
#pragma unroll
        for (int t = 0; t < TAPS; ++t) {
            if (!tap_inside(tap_centre_y + t / K - R, tap_centre_x + t % K - R, g)) {
#pragma unroll
                for (int q = 0; q < PAIR; ++q) sum[q][t] = 0;
            }
        }
    }

    if constexpr (FROM_LOGITS) {
        // d logits_t = p_t * (g_t - sum_u p_u g_u), p = softmax(logits); the
        // logits are re-read (cache hits) instead of held, to save registers.
        const index_t centre_y = y / s, centre_x = x / s;
        const int sub_y = (int)(y - centre_y * s), sub_x = (int)(x - centre_x * s);
#pragma unroll
        for (int q = 0; q < PAIR; ++q) {
            acc_t probability[TAPS];
#pragma unroll
            for (int t = 0; t < TAPS; ++t)
                probability[t] = storage<scalar_t>::load(logit_address<TAPS>(
                    logits, ls, p.n, p.group, t, centre_y, sub_y, centre_x, sub_x + q, s));
            softmax_in_place<TAPS>(probability);
            acc_t dot = 0;
#pragma unroll
            for (int t = 0; t < TAPS; ++t) dot += probability[t] * sum[q][t];
#pragma unroll
            for (int t = 0; t < TAPS; ++t) {
                const index_t channel = ((p.group * TAPS + t) * s + sub_y) * s + sub_x + q;
                storage<scalar_t>::store(grad_masks + p.n * ms.n + channel * ms.c +
                                             centre_y * ms.h + centre_x * ms.w,
                                         probability[t] * (sum[q][t] - dot));
            }
        }
    } else {
#pragma unroll
    for (int t = 0; t < TAPS; ++t) {
        scalar_t* out = grad_masks + p.n * ms.n + (p.group * TAPS + t) * ms.c + y * ms.h + x * ms.w;
        if constexpr (PAIR == 2) {
            pair_access<scalar_t>::store(out, sum[0][t], sum[PAIR - 1][t]);
        } else {
            storage<scalar_t>::store(out, sum[0][t]);
        }
    }
    }
}

// ---------------------------------------------------------------- grad_features

// Sub-pixel plane size, padded to tile_cols (mod 32): a warp's s sub-pixel
// columns (sub_x * plane + local_w, local_w < tile_cols) then fall in distinct
// banks, where an unpadded multiple of 32 would put them all in the same ones.
__device__ __forceinline__ int padded_sub_plane(int plane, int tile_cols) {
    const int target = tile_cols % 32;
    return plane + ((target - plane % 32) % 32 + 32) % 32;
}

// Block: (tile_cols * s) x (tile_rows * s) threads, one per sub-pixel (a, b) of
// a tile of input pixels; the launcher sizes it so both are whole.
// Tap (i, j) of output (y, x) reads input (y/s + i - R, x/s + j - R), so input
// (h, w) receives, through sub-pixel (a, b), tap (i, j) of output
// ((h - i + R) s + a, (w - j + R) s + b).
template <typename scalar_t, int K, bool FROM_LOGITS>
__device__ void carafe_backward_features_tiled_impl(
    const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ masks,
    scalar_t* __restrict__ grad_features, const carafe_geometry g, const strides4 gs,
    const strides4 ms, const strides4 fs, index_t channels_per_block, int channel_batch) {
    typedef typename storage<scalar_t>::acc_t acc_t;
    constexpr int TAPS = K * K;
    constexpr int R = (K - 1) / 2;
    CARAFE_DYNAMIC_SHARED(acc_t, shared);
    const int s = (int)g.scale_factor;
    const int tile_cols = blockDim.x / s, tile_rows = blockDim.y / s;
    const index_t out_height = g.height * s, out_width = g.width * s;
    const index_t channels_per_group = g.channels / g.group_size;
    const index_t slices = (channels_per_group + channels_per_block - 1) / channels_per_block;
    const tile_position p = block_position((g.width + tile_cols - 1) / tile_cols,
                                           (g.height + tile_rows - 1) / tile_rows, slices,
                                           g.group_size);
    const index_t w0 = p.tile_x * tile_cols, h0 = p.tile_y * tile_rows;
    const int local_w = threadIdx.x / s, sub_x = threadIdx.x % s;
    const int local_h = threadIdx.y / s, sub_y = threadIdx.y % s;
    const index_t h = h0 + local_h, w = w0 + local_w;
    // grad_output halo: centre rows h0 - (K-1-R) .. h0 + tile_rows - 1 + R, times s.
    const index_t centre_row0 = h0 - (K - 1 - R), centre_col0 = w0 - (K - 1 - R);
    const int rows = (tile_rows + K - 1) * s, cols = (tile_cols + K - 1) * s;
    const int plane = rows * cols;
    const int threads = blockDim.x * blockDim.y;
    const int thread = threadIdx.y * blockDim.x + threadIdx.x;

    if constexpr (FROM_LOGITS) {
        // Softmax normaliser (max, 1 / sum) of every halo output pixel, in smem.
        for (int e = thread; e < plane; e += threads) {
            const int r = e / cols, k = e - (e / cols) * cols;
            const index_t y = centre_row0 * s + r, x = centre_col0 * s + k;
            acc_t largest = 0, total = 1;
            if (y >= 0 && y < out_height && x >= 0 && x < out_width) {
                acc_t values[TAPS];
#pragma unroll
                for (int t = 0; t < TAPS; ++t)
                    values[t] = storage<scalar_t>::load(logit_address<TAPS>(
                        masks, ms, p.n, p.group, t, centre_row0 + r / s, r % s,
                        centre_col0 + k / s, k % s, s));
                largest = values[0];
#pragma unroll
                for (int t = 1; t < TAPS; ++t) largest = values[t] > largest ? values[t] : largest;
                total = 0;
#pragma unroll
                for (int t = 0; t < TAPS; ++t) total += accumulate_exp(values[t] - largest);
            }
            shared[2 * e] = largest;
            shared[2 * e + 1] = acc_t(1) / total;
        }
        __syncthreads();
    }

    acc_t weight[TAPS];
#pragma unroll
    for (int i = 0; i < K; ++i)
#pragma unroll
        for (int j = 0; j < K; ++j) {
            const index_t centre_h = h - i + R, centre_w = w - j + R;
            acc_t value = 0;
            if (centre_h >= 0 && centre_h < g.height && centre_w >= 0 && centre_w < g.width) {
                const index_t y = centre_h * s + sub_y, x = centre_w * s + sub_x;
                if constexpr (FROM_LOGITS) {
                    const int e = (int)((y - centre_row0 * s) * cols + (x - centre_col0 * s));
                    const acc_t logit = storage<scalar_t>::load(logit_address<TAPS>(
                        masks, ms, p.n, p.group, i * K + j, centre_h, sub_y, centre_w, sub_x, s));
                    value = accumulate_exp(logit - shared[2 * e]) * shared[2 * e + 1];
                } else {
                    value = storage<scalar_t>::load(masks + p.n * ms.n +
                                                    (p.group * TAPS + i * K + j) * ms.c +
                                                    y * ms.h + x * ms.w);
                }
            }
            weight[i * K + j] = value;
        }

    // grad_output halo split by sub-pixel: plane (a, b) holds the values at
    // (centre * s + a, centre * s + b), so tap (i, j) is a fixed step of
    // -(i * centre_cols + j) from the thread's tap (0, 0).
    const int centre_rows = tile_rows + K - 1, centre_cols = tile_cols + K - 1;
    const int sub_plane = padded_sub_plane(centre_rows * centre_cols, tile_cols);
    const int channel_plane = s * s * sub_plane;
    acc_t* halo = shared;
    acc_t* partial = shared + channel_batch * channel_plane;
    // One channel's partial sums; odd, so the threads of one sub-pixel column
    // reading s * s channels apart do not share banks.
    const int partial_pitch = threads + 1;
    const index_t group_begin = p.group * channels_per_group;
    const index_t c_begin = group_begin + p.slice * channels_per_block;
    const index_t c_end = min(c_begin + channels_per_block, group_begin + channels_per_group);
    const int base = (sub_y * s + sub_x) * sub_plane + (local_h + K - 1) * centre_cols +
                     (local_w + K - 1);
    // Staging: this thread stages halo columns threadIdx.x + m * blockDim.x and
    // rows threadIdx.y + n * blockDim.y. Both steps are multiples of s, so its
    // sub-pixel plane never changes and no element needs a division; column
    // offsets are computed once, and each pass issues its loads before its stores.
    constexpr int COLUMN_SLOTS = 3;  // cols <= 3 * blockDim.x for K <= 7, s <= 8
    static_assert(K <= 7, "three column slots cover K <= 7 at s <= 8");
    constexpr int ROWS_PER_PASS = 2;
    const int row_slots = (rows + (int)blockDim.y - 1) / (int)blockDim.y;
    index_t column_offset[COLUMN_SLOTS];
    unsigned columns_ok = 0;
#pragma unroll
    for (int m = 0; m < COLUMN_SLOTS; ++m) {
        const int k = threadIdx.x + m * blockDim.x;
        const index_t x = centre_col0 * s + k;
        columns_ok |= (k < cols && x >= 0 && x < out_width) ? 1u << m : 0u;
        column_offset[m] = x * gs.w;
    }
    const int staged_at = (sub_y * s + sub_x) * sub_plane + local_h * centre_cols + local_w;
    const scalar_t* go_image = grad_output + p.n * gs.n;
    for (index_t c0 = c_begin; c0 < c_end; c0 += channel_batch) {
        const int count = (int)min((index_t)channel_batch, c_end - c0);
        __syncthreads();
        for (int cc = 0; cc < channel_batch; ++cc) {
            const scalar_t* go_channel = go_image + (c0 + cc) * gs.c;
            for (int n0 = 0; n0 < row_slots; n0 += ROWS_PER_PASS) {
                acc_t value[ROWS_PER_PASS][COLUMN_SLOTS];
#pragma unroll
                for (int v = 0; v < ROWS_PER_PASS; ++v) {
                    const int r = threadIdx.y + (n0 + v) * blockDim.y;
                    const index_t y = centre_row0 * s + r;
                    const bool row_ok = cc < count && r < rows && y >= 0 && y < out_height;
                    const scalar_t* go_row = go_channel + y * gs.h;
#pragma unroll
                    for (int m = 0; m < COLUMN_SLOTS; ++m) {
                        value[v][m] = 0;
                        if (row_ok && (columns_ok >> m & 1u))
                            value[v][m] = storage<scalar_t>::load(go_row + column_offset[m]);
                    }
                }
#pragma unroll
                for (int v = 0; v < ROWS_PER_PASS; ++v) {
                    const int r = threadIdx.y + (n0 + v) * blockDim.y;
                    acc_t* row = halo + cc * channel_plane + staged_at +
                                 (n0 + v) * tile_rows * centre_cols;
#pragma unroll
                    for (int m = 0; m < COLUMN_SLOTS; ++m)
                        if (r < rows && threadIdx.x + m * blockDim.x < cols)
                            row[m * tile_cols] = value[v][m];
                }
            }
        }
        __syncthreads();
#pragma unroll 1
        for (int cc = 0; cc < count; ++cc) {
            const acc_t* window = halo + cc * channel_plane + base;
            acc_t sum = 0;
#pragma unroll
            for (int i = 0; i < K; ++i)
#pragma unroll
                for (int j = 0; j < K; ++j) sum += weight[i * K + j] * window[-(i * centre_cols + j)];
            partial[cc * partial_pitch + thread] = sum;
        }
        __syncthreads();
        // The s * s threads of a pixel share out its channels (sub-pixel (a, b)
        // takes a * s + b, then every s * s-th); each total adds the sub-pixels
        // in the same fixed order whichever thread computes it.
        if (h < g.height && w < g.width) {
            const int first = local_h * s * (int)blockDim.x + local_w * s;  // sub-pixel (0, 0)
            for (int cc = sub_y * s + sub_x; cc < count; cc += s * s) {
                acc_t total = 0;
                for (int a = 0; a < s; ++a)
                    for (int b = 0; b < s; ++b)
                        total += partial[cc * partial_pitch + first + a * blockDim.x + b];
                storage<scalar_t>::store(
                    grad_features + p.n * fs.n + (c0 + cc) * fs.c + h * fs.h + w * fs.w, total);
            }
        }
    }
}

// ---------------------------------------------------------------- entry points
// All tiled kernels take 4 pointers (a, b, c, out), the geometry, 4 stride
// sets and 2 tiling arguments; unused pointers are passed as 0.
#define CARAFE_TILED_PARAMS(scalar_t)                                                         \
    const scalar_t *a, const scalar_t *b, const scalar_t *c, scalar_t *out,                   \
        CARAFE_GEOMETRY_PARAMS, CARAFE_STRIDE_PARAMS(a), CARAFE_STRIDE_PARAMS(b),             \
        CARAFE_STRIDE_PARAMS(c), CARAFE_STRIDE_PARAMS(o), index_t channels_per_block,         \
        index_t channel_batch

#define CARAFE_DEFINE_TILED_K(suffix, scalar_t, K, PAIR)                                       \
    extern "C" __global__ void __launch_bounds__(256, 1)                                           \
        carafe_forward_tiled_k##K##_p##PAIR##_##suffix(CARAFE_TILED_PARAMS(scalar_t)) {        \
        carafe_forward_tiled_impl<scalar_t, K, PAIR, false>(                                   \
            a, b, out, CARAFE_GEOMETRY, CARAFE_STRIDES(a), CARAFE_STRIDES(b),                  \
            CARAFE_STRIDES(o), channels_per_block, (int)channel_batch);                        \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(256, 1)                                           \
        carafe_backward_masks_tiled_k##K##_p##PAIR##_##suffix(CARAFE_TILED_PARAMS(scalar_t)) { \
        carafe_backward_masks_tiled_impl<scalar_t, K, PAIR, false>(                            \
            a, b, c, out, CARAFE_GEOMETRY, CARAFE_STRIDES(a), CARAFE_STRIDES(b),               \
            CARAFE_STRIDES(c), CARAFE_STRIDES(o), channels_per_block, (int)channel_batch);                         \
    }

#define CARAFE_DEFINE_TILED_K_SINGLE(suffix, scalar_t, K)                                      \
    CARAFE_DEFINE_TILED_K(suffix, scalar_t, K, 1)                                              \
    extern "C" __global__ void __launch_bounds__(256, 1)                                          \
        carafe_backward_features_tiled_k##K##_##suffix(CARAFE_TILED_PARAMS(scalar_t)) {        \
        carafe_backward_features_tiled_impl<scalar_t, K, false>(                               \
            a, b, out, CARAFE_GEOMETRY, CARAFE_STRIDES(a), CARAFE_STRIDES(b),                  \
            CARAFE_STRIDES(o), channels_per_block, (int)channel_batch);                        \
    }

// The fused forward with two pixels per thread: one softmax per pixel per
// channel slice, and each staged window value serves both pixels.
#define CARAFE_DEFINE_FUSED_PAIR_K(suffix, scalar_t, K)                                        \
    extern "C" __global__ void __launch_bounds__(256, 1)                                       \
        carafe_fused_forward_k##K##_p2_##suffix(CARAFE_TILED_PARAMS(scalar_t)) {               \
        carafe_forward_tiled_impl<scalar_t, K, 2, true>(                                       \
            a, b, out, CARAFE_GEOMETRY, CARAFE_STRIDES(a), CARAFE_STRIDES(b),                  \
            CARAFE_STRIDES(o), channels_per_block, (int)channel_batch);                        \
    }

#define CARAFE_DEFINE_FUSED_K(suffix, scalar_t, K)                                             \
    extern "C" __global__ void __launch_bounds__(256, 1)                                           \
        carafe_fused_forward_k##K##_##suffix(CARAFE_TILED_PARAMS(scalar_t)) {                  \
        carafe_forward_tiled_impl<scalar_t, K, 1, true>(                                       \
            a, b, out, CARAFE_GEOMETRY, CARAFE_STRIDES(a), CARAFE_STRIDES(b),                  \
            CARAFE_STRIDES(o), channels_per_block, (int)channel_batch);                        \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(256, 1)                                           \
        carafe_fused_backward_logits_k##K##_##suffix(CARAFE_TILED_PARAMS(scalar_t)) {          \
        carafe_backward_masks_tiled_impl<scalar_t, K, 1, true>(                                \
            a, b, c, out, CARAFE_GEOMETRY, CARAFE_STRIDES(a), CARAFE_STRIDES(b),               \
            CARAFE_STRIDES(c), CARAFE_STRIDES(o), channels_per_block, (int)channel_batch);                         \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(256, 1)                                          \
        carafe_fused_backward_features_k##K##_##suffix(CARAFE_TILED_PARAMS(scalar_t)) {        \
        carafe_backward_features_tiled_impl<scalar_t, K, true>(                                \
            a, b, out, CARAFE_GEOMETRY, CARAFE_STRIDES(a), CARAFE_STRIDES(b),                  \
            CARAFE_STRIDES(o), channels_per_block, (int)channel_batch);                        \
    }
