// Tiled CARAFE kernels: grad_masks (and the fused logits backward).
// Part of carafe_tiled.cuh, which includes it after the shared helpers.
#pragma once

// ---------------------------------------------------------------- grad_masks

// grad_masks (or, FROM_LOGITS, grad of the raw logits through the softmax):
// K*K sums per output pixel over all channels of the group.
//
// A block owns one output row of 32 pixels; each of its 8 warps takes a
// contiguous subset of `channels_per_block` channels of the group (ascending)
// and sums them for that row, so a block walks an eighth of the channels and
// the grid has a block per output row. Each warp stages its own channels'
// halo (K rows, the same for every s) in its own part of shared memory, so
// the channel loop needs warp barriers only; every global load of a batch
// (halo and grad_output) is issued before the first store. The warps' partial
// sums are then added in ascending subset order through shared memory: a
// fixed order, so the result is bitwise reproducible.
#define CARAFE_MASKS_SUBSETS CARAFE_TILE_THREADS_Y

// (Even s with pair-aligned tensors takes the 2 x 2 kernel of
// carafe_tiled_grad_masks_quad.cuh instead.)
template <typename scalar_t, int K, bool FROM_LOGITS>
__device__ void carafe_backward_masks_tiled_impl(
    const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ features,
    const scalar_t* __restrict__ logits, scalar_t* __restrict__ grad_masks,
    const carafe_geometry g, const strides4 gs, const strides4 fs, const strides4 ls,
    const strides4 ms, index_t channels_per_block, int channel_batch) {
    typedef typename storage<scalar_t>::acc_t acc_t;
    constexpr int TAPS = K * K;
    constexpr int R = (K - 1) / 2;
    constexpr int LANES = CARAFE_TILE_THREADS_X;
    constexpr int PITCH = tile_pitch<K, 1>();
    constexpr int BATCH = CARAFE_MASKS_BATCH, SUBSETS = CARAFE_MASKS_SUBSETS;
    // One output row reads K input rows whatever s is: halo_extent(1, s, K) == K.
    constexpr int CHANNEL_PLANE = K * PITCH;
    constexpr int SLOTS = (CHANNEL_PLANE + LANES - 1) / LANES;  // staged elements per lane
    constexpr int SUBSET_PLANE = BATCH * CHANNEL_PLANE;
    CARAFE_DYNAMIC_SHARED(acc_t, halo);
    const index_t s = g.scale_factor;
    const index_t out_height = g.height * s, out_width = g.width * s;
    const int tile_w = LANES;
    const index_t channels_per_group = g.channels / g.group_size;
    const tile_position p =
        block_position((out_width + tile_w - 1) / tile_w, out_height, 1, g.group_size);
    const index_t x0 = p.tile_x * tile_w, y = p.tile_y;
    const index_t x = x0 + (index_t)threadIdx.x;
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

    acc_t sum[TAPS];
#pragma unroll
    for (int t = 0; t < TAPS; ++t) sum[t] = 0;

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
        // raw loads, converted when stored: every load of the batch issues first
        typename storage<scalar_t>::raw_t staged[BATCH][SLOTS];
        acc_t grad[BATCH];
#pragma unroll
        for (int cc = 0; cc < BATCH; ++cc) {
            const index_t channel = my_begin + c0 + cc;
            const bool channel_ok = c0 + cc < chunk && channel < c_end;
            const scalar_t* plane = feature_rows + channel * fs.c;
#pragma unroll
            for (int slot = 0; slot < SLOTS; ++slot) {
                staged[cc][slot] = 0;
                if (channel_ok && (elements_ok >> slot & 1u))
                    staged[cc][slot] = storage<scalar_t>::load_raw(plane + element_offset[slot]);
            }
            grad[cc] = 0;
            if (inside && channel_ok) grad[cc] = storage<scalar_t>::load(go_base + channel * gs.c);
        }
        __syncwarp();  // the warp's previous batch fully read
#pragma unroll
        for (int cc = 0; cc < BATCH; ++cc)
#pragma unroll
            for (int slot = 0; slot < SLOTS; ++slot)
                if (SLOTS * LANES == CHANNEL_PLANE || lane + slot * LANES < CHANNEL_PLANE)
                    own[cc * CHANNEL_PLANE + lane + slot * LANES] =
                        storage<scalar_t>::widen(staged[cc][slot]);
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
                    sum[i * K + j] += grad[cc] * w[i * PITCH + j];
                }
        }
    }
    // Subset 0 adds the other subsets' sums, ascending, one kernel row at a time
    // (the halo space is reused: SUBSETS * K * 32 <= its size).
    static_assert(K * LANES <= SUBSET_PLANE, "reduction space");
    acc_t* partial = halo;
#pragma unroll
    for (int i = 0; i < K; ++i) {
        __syncthreads();
        if (subset != 0) {
#pragma unroll
            for (int j = 0; j < K; ++j)
                partial[(subset * K + j) * CARAFE_TILE_THREADS_X + lane] = sum[i * K + j];
        }
        __syncthreads();
        if (subset == 0) {
#pragma unroll
            for (int other = 1; other < SUBSETS; ++other)
#pragma unroll
                for (int j = 0; j < K; ++j)
                    sum[i * K + j] += partial[(other * K + j) * CARAFE_TILE_THREADS_X + lane];
        }
    }
    // After the last barrier. FROM_LOGITS keeps the warp's outside lanes for the
    // warp barrier below.
    if (subset != 0 || (!FROM_LOGITS && !inside)) return;
    {
        // A tap outside the input has no effect on the output: its gradient is
        // exactly zero, not grad_output * (zero halo), which is NaN for Inf.
        const index_t tap_centre_y = y / s, tap_centre_x = x / s;
#pragma unroll
        for (int t = 0; t < TAPS; ++t) {
            if (!tap_inside(tap_centre_y + t / K - R, tap_centre_x + t % K - R, g)) sum[t] = 0;
        }
    }

    if constexpr (FROM_LOGITS) {
        // d logits_t = p_t * (g_t - sum_u p_u g_u), p = softmax(logits); the
        // logits are re-read (cache hits) instead of held, to save registers.
        // The sums wait in shared memory, in this lane's own column of the space the
        // reduction used (no other warp touches it after the last barrier), so they
        // and the K * K probabilities are not held in registers together. The warp
        // barrier keeps the compiler from carrying the stored values in registers.
        static_assert(TAPS * LANES <= SUBSETS * SUBSET_PLANE, "sums space");
        acc_t* sums = halo + lane;
#pragma unroll
        for (int t = 0; t < TAPS; ++t) sums[t * LANES] = sum[t];
        __syncwarp();
        if (!inside) return;
        const index_t centre_y = y / s, centre_x = x / s;
        const int sub_y = (int)(y - centre_y * s), sub_x = (int)(x - centre_x * s);
        acc_t probability[TAPS];
#pragma unroll
        for (int t = 0; t < TAPS; ++t)
            probability[t] = storage<scalar_t>::load(logit_address<TAPS>(
                logits, ls, p.n, p.group, t, centre_y, sub_y, centre_x, sub_x, s));
        softmax_in_place<TAPS>(probability);
        acc_t dot = 0;
#pragma unroll
        for (int t = 0; t < TAPS; ++t) dot += probability[t] * sums[t * LANES];
#pragma unroll
        for (int t = 0; t < TAPS; ++t) {
            const index_t channel = ((p.group * TAPS + t) * s + sub_y) * s + sub_x;
            storage<scalar_t>::store(
                grad_masks + p.n * ms.n + channel * ms.c + centre_y * ms.h + centre_x * ms.w,
                probability[t] * (sums[t * LANES] - dot));
        }
    } else {
#pragma unroll
        for (int t = 0; t < TAPS; ++t)
            storage<scalar_t>::store(
                grad_masks + p.n * ms.n + (p.group * TAPS + t) * ms.c + y * ms.h + x * ms.w,
                sum[t]);
    }
}

