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

