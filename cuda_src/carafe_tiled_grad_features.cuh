// Tiled CARAFE kernels: grad_features (and the fused features backward).
// Part of carafe_tiled.cuh, which includes it after the shared helpers.
#pragma once

// ---------------------------------------------------------------- grad_features

// Sub-pixel plane size, padded to tile_cols (mod 32): a warp's s sub-pixel
// columns (sub_x * plane + local_w, local_w < tile_cols) then fall in distinct
// banks, where an unpadded multiple of 32 would put them all in the same ones.
__device__ __forceinline__ int padded_sub_plane(int plane, int tile_cols) {
    const int target = tile_cols % 32;
    return plane + ((target - plane % 32) % 32 + 32) % 32;
}

// Halo elements one thread stages per pass (CARAFE_FEATURES_SLOTS, from _kernels/constants.py).

// Where element e of the [rows][cols] grad_output halo (output pixels) goes:
// sub-pixel plane (r % s, k % s), row r / s, column k / s.
struct halo_element {
    index_t offset;  // y * gs.h + x * gs.w
    int at;          // shared index in the sub-pixel layout
    bool staged;     // in the halo
    bool loaded;     // in the halo and inside the image

    __device__ __forceinline__ halo_element(int e, int rows, int cols, int s, int sub_plane,
                                            int centre_cols, index_t row0, index_t col0,
                                            const strides4& gs, index_t out_height,
                                            index_t out_width) {
        const int r = e / cols, k = e - (e / cols) * cols;
        const int centre_r = r / s, centre_k = k / s;
        at = ((r - centre_r * s) * s + (k - centre_k * s)) * sub_plane + centre_r * centre_cols +
             centre_k;
        const index_t y = row0 + r, x = col0 + k;
        offset = y * gs.h + x * gs.w;
        staged = r < rows;
        loaded = staged && y >= 0 && y < out_height && x >= 0 && x < out_width;
    }

    // Channels [0, count) of this element (channel stride `stride`) into the
    // halo planes [0, count), `plane` apart: every load before any store.
    template <typename scalar_t, typename acc_t>
    __device__ __forceinline__ void stage(acc_t* halo, const scalar_t* channels, index_t stride,
                                          int count, int plane) const {
        if (!staged) return;
        acc_t value[CARAFE_CHANNEL_BATCH_MAX];
#pragma unroll
        for (int cc = 0; cc < CARAFE_CHANNEL_BATCH_MAX; ++cc) {
            value[cc] = 0;
            if (loaded && cc < count)
                value[cc] = storage<scalar_t>::load(channels + cc * stride + offset);
        }
#pragma unroll
        for (int cc = 0; cc < CARAFE_CHANNEL_BATCH_MAX; ++cc)
            if (cc < count) halo[cc * plane + at] = value[cc];
    }
};

// The grad_output halo's staging. A thread owns elements first + i * threads
// (i < SLOTS) of a pass; their global offsets, shared indices and image tests
// are computed once per pass, not per channel, so a staged element costs one
// predicated load and one store.
struct features_halo_slots {
    index_t offset[CARAFE_FEATURES_SLOTS];  // y * gs.h + x * gs.w
    int at[CARAFE_FEATURES_SLOTS];          // shared index in the sub-pixel layout
    unsigned int loaded;  // bit i: slot i is in the halo and inside the image
    unsigned int staged;  // bit i: slot i is in the halo

    __device__ __forceinline__ void locate(int first, int threads, int rows, int cols, int s,
                                           int sub_plane, int centre_cols, index_t row0,
                                           index_t col0, const strides4& gs, index_t out_height,
                                           index_t out_width) {
        loaded = staged = 0;
#pragma unroll
        for (int i = 0; i < CARAFE_FEATURES_SLOTS; ++i) {
            const halo_element element(first + i * threads, rows, cols, s, sub_plane,
                                       centre_cols, row0, col0, gs, out_height, out_width);
            at[i] = element.at;
            offset[i] = element.offset;
            if (element.staged) staged |= 1u << i;
            if (element.loaded) loaded |= 1u << i;
        }
    }

    // Channels [0, count) of `channels` (channel stride `stride`) into the
    // halo planes [0, count), `plane` apart: every load before any store, raw
    // (fp16 / bf16 bits), widened only when stored, so no conversion waits on
    // one load while the others could be in flight.
    template <typename scalar_t, typename acc_t>
    __device__ __forceinline__ void stage(acc_t* halo, const scalar_t* channels, index_t stride,
                                          int count, int plane) const {
        typename storage<scalar_t>::raw_t value[CARAFE_CHANNEL_BATCH_MAX][CARAFE_FEATURES_SLOTS];
#pragma unroll
        for (int cc = 0; cc < CARAFE_CHANNEL_BATCH_MAX; ++cc) {
            const scalar_t* channel = channels + cc * stride;
#pragma unroll
            for (int i = 0; i < CARAFE_FEATURES_SLOTS; ++i) {
                value[cc][i] = 0;
                if (cc < count && (loaded >> i & 1u))
                    value[cc][i] = storage<scalar_t>::load_raw(channel + offset[i]);
            }
        }
#pragma unroll
        for (int cc = 0; cc < CARAFE_CHANNEL_BATCH_MAX; ++cc) {
            if (cc >= count) break;
#pragma unroll
            for (int i = 0; i < CARAFE_FEATURES_SLOTS; ++i)
                if (staged >> i & 1u)
                    halo[cc * plane + at[i]] = storage<scalar_t>::widen(value[cc][i]);
        }
    }
};

// Softmax normaliser (max, 1 / sum) of every output pixel of the grad_output
// halo (rows x cols output pixels from centre (row0, col0) * s), into shared[2e],
// shared[2e + 1] for element e = r * cols + k.
template <typename scalar_t, int TAPS>
__device__ __forceinline__ void features_softmax_normalisers(
    typename storage<scalar_t>::acc_t* shared, const scalar_t* masks, const strides4& ms,
    const tile_position& p, int thread, int threads, int plane, int cols, int s,
    index_t centre_row0, index_t centre_col0, index_t out_height, index_t out_width,
    index_t taps_apart) {
    typedef typename storage<scalar_t>::acc_t acc_t;
    for (int e = thread; e < plane; e += threads) {
        const int r = e / cols, k = e - (e / cols) * cols;
        const index_t y = centre_row0 * s + r, x = centre_col0 * s + k;
        acc_t largest = 0, total = 1;
        if (y >= 0 && y < out_height && x >= 0 && x < out_width) {
            const int centre_r = r / s, centre_k = k / s;
            const scalar_t* logit =
                logit_address<TAPS>(masks, ms, p.n, p.group, 0, centre_row0 + centre_r,
                                    r - centre_r * s, centre_col0 + centre_k,
                                    k - centre_k * s, s);
            acc_t values[TAPS];
#pragma unroll
            for (int t = 0; t < TAPS; ++t)
                values[t] = storage<scalar_t>::load(logit + t * taps_apart);
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
}

// The K * K masks (or logits, normalised with the shared normalisers) that reach
// input pixel (h, w) through sub-pixel (sub_y, sub_x); zero where the tap's
// output pixel lies outside the image. (local_h, local_w): the pixel in its
// tile, whose halo is `cols` output pixels wide. Tap (i, j) sits a fixed step
// from tap (0, 0): i * row_step + j * col_step, so no 64-bit multiply runs per tap.
template <typename scalar_t, int K, bool FROM_LOGITS>
__device__ __forceinline__ void features_tap_weights(
    typename storage<scalar_t>::acc_t (&weight)[K * K], const scalar_t* masks,
    const strides4& ms, const carafe_geometry& g, const tile_position& p, index_t h, index_t w,
    int sub_y, int sub_x, int s, index_t taps_apart,
    const typename storage<scalar_t>::acc_t* shared, int local_h, int local_w, int cols) {
    typedef typename storage<scalar_t>::acc_t acc_t;
    constexpr int TAPS = K * K;
    constexpr int R = (K - 1) / 2;
    // One tap back is one output pixel of masks (s apart), one input pixel of logits.
    const index_t pixel_step = FROM_LOGITS ? 1 : s;
    const index_t row_step = K * taps_apart - pixel_step * ms.h;
    const index_t col_step = taps_apart - pixel_step * ms.w;
    const scalar_t* tap_origin;
    if constexpr (FROM_LOGITS) {
        tap_origin = logit_address<TAPS>(masks, ms, p.n, p.group, 0, h + R, sub_y, w + R, sub_x, s);
    } else {
        tap_origin = masks + p.n * ms.n + (p.group * TAPS) * ms.c + ((h + R) * s + sub_y) * ms.h +
                     ((w + R) * s + sub_x) * ms.w;
    }
    // FROM_LOGITS: the normaliser of tap (i, j)'s output pixel in smem, as a step too.
    const int normaliser_origin =
        ((local_h + K - 1) * s + sub_y) * cols + (local_w + K - 1) * s + sub_x;
#pragma unroll
    for (int i = 0; i < K; ++i)
#pragma unroll
        for (int j = 0; j < K; ++j) {
            const index_t centre_h = h - i + R, centre_w = w - j + R;
            acc_t value = 0;
            if (centre_h >= 0 && centre_h < g.height && centre_w >= 0 && centre_w < g.width) {
                value = storage<scalar_t>::load(tap_origin + i * row_step + j * col_step);
                if constexpr (FROM_LOGITS) {
                    const int e = normaliser_origin - (i * cols + j) * s;
                    value = accumulate_exp(value - shared[2 * e]) * shared[2 * e + 1];
                }
            }
            weight[i * K + j] = value;
        }
}

// One row of a pixel's s partial sums, added left to right from the first (no
// leading zero, which would turn a sum of negative zeros positive).
template <typename acc_t>
__device__ __forceinline__ acc_t sub_pixel_row_total(const acc_t* sums, int s) {
    acc_t total = sums[0];
#pragma unroll 1
    for (int b = 1; b < s; ++b) total += sums[b];
    return total;
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
    const int local_w = threadIdx.x / s, sub_x = threadIdx.x - local_w * s;
    const int local_h = threadIdx.y / s, sub_y = threadIdx.y - local_h * s;
    const index_t h = h0 + local_h, w = w0 + local_w;
    // grad_output halo: centre rows h0 - (K-1-R) .. h0 + tile_rows - 1 + R, times s.
    const index_t centre_row0 = h0 - (K - 1 - R), centre_col0 = w0 - (K - 1 - R);
    const int rows = (tile_rows + K - 1) * s, cols = (tile_cols + K - 1) * s;
    const int plane = rows * cols;
    const int threads = blockDim.x * blockDim.y;
    const int thread = threadIdx.y * blockDim.x + threadIdx.x;

    // Channel distance between consecutive taps (logits: pixel_shuffle's s * s).
    const index_t taps_apart = FROM_LOGITS ? (index_t)s * s * ms.c : ms.c;
    if constexpr (FROM_LOGITS) {
        features_softmax_normalisers<scalar_t, TAPS>(shared, masks, ms, p, thread, threads, plane,
                                                     cols, s, centre_row0, centre_col0,
                                                     out_height, out_width, taps_apart);
        __syncthreads();
    }

    acc_t weight[TAPS];
    features_tap_weights<scalar_t, K, FROM_LOGITS>(weight, masks, ms, g, p, h, w, sub_y, sub_x, s,
                                                   taps_apart, shared, local_h, local_w, cols);

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
    // Staging passes of SLOTS elements a thread; the first pass's slots stay in
    // registers for the whole channel loop (one pass covers s <= 2 at K <= 5).
    const int pass_elements = CARAFE_FEATURES_SLOTS * threads;
    const int passes = (plane + pass_elements - 1) / pass_elements;
    features_halo_slots first_pass;
    first_pass.locate(thread, threads, rows, cols, s, sub_plane, centre_cols, centre_row0 * s,
                      centre_col0 * s, gs, out_height, out_width);
    // The s * s threads of a pixel share out its channels (sub-pixel (a, b)
    // takes a * s + b, then every s * s-th); each total adds the sub-pixels
    // in the same fixed order whichever thread computes it: each row of
    // sub-pixels first, then the rows, (p00 + p01) + (p10 + p11) at s = 2, the
    // four-pixel kernel's association, so both kernels give the same bits.
    const int first = local_h * s * (int)blockDim.x + local_w * s;  // sub-pixel (0, 0)
    const scalar_t* go_channels = grad_output + p.n * gs.n + c_begin * gs.c;
    for (index_t c0 = c_begin; c0 < c_end; c0 += channel_batch) {
        const int count = (int)min((index_t)channel_batch, c_end - c0);
        __syncthreads();  // previous batch's halo and partial sums fully read
        first_pass.stage(halo, go_channels, gs.c, count, channel_plane);
        // Large s only: the further passes' elements one at a time, so no second
        // set of slots is live beside the first (it made ptxas spill on sm_100+).
        for (int pass = 1; pass < passes; ++pass) {
#pragma unroll 1
            for (int i = 0; i < CARAFE_FEATURES_SLOTS; ++i) {
                const halo_element element(thread + (pass * CARAFE_FEATURES_SLOTS + i) * threads,
                                           rows, cols, s, sub_plane, centre_cols,
                                           centre_row0 * s, centre_col0 * s, gs, out_height,
                                           out_width);
                element.stage(halo, go_channels, gs.c, count, channel_plane);
            }
        }
        go_channels += channel_batch * gs.c;
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
        if (h < g.height && w < g.width) {
            for (int cc = sub_y * s + sub_x; cc < count; cc += s * s) {
                const acc_t* sums = partial + cc * partial_pitch + first;  // sub-pixel (0, 0)
                acc_t total = sub_pixel_row_total(sums, s);
#pragma unroll 1
                for (int a = 1; a < s; ++a) total += sub_pixel_row_total(sums + a * blockDim.x, s);
                storage<scalar_t>::store(
                    grad_features + p.n * fs.n + (c0 + cc) * fs.c + h * fs.h + w * fs.w, total);
            }
        }
    }
}
