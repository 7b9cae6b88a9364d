// Tiled CARAFE kernels: the default wherever they apply (see carafe_cupy/_plan/planner.py).
//
// A block owns a tile of output pixels (32 x 8 threads). The tile's mask
// values stay in registers for the whole channel loop (K*K per pixel, K a
// template parameter), and the input window of each channel (the tile's halo,
// zero outside the image) is staged in shared memory, a batch of channels at a
// time. Features, masks and outputs therefore cross DRAM about once each.
//
//   forward:         out tile, masks in registers, feature halo in smem.
//                    Pairs: 2 x 2 pixels a thread, the halo double buffered
//                    (carafe_tiled_forward_quad.cuh).
//   grad_masks:      one output row per block, K*K sums per pixel in
//                    registers; the 8 warps split the group's channels, each
//                    staging its own feature halo (warp barriers only), and
//                    their partial sums are added in a fixed order. Pairs:
//                    2 x 2 pixels a thread (carafe_tiled_grad_masks_quad.cuh).
//   grad_features:   a tile of input pixels; each of its s*s sub-pixel threads
//                    holds the K*K masks that reach its input pixel, sums over
//                    the grad_output halo in smem (padded sub-pixel planes: no
//                    bank conflicts), and the s*s partial sums are added in a
//                    fixed order through shared memory. At s = 2 (K <= 5,
//                    4-byte accumulators) a thread takes four adjacent input
//                    pixels at one sub-pixel instead, their 4*K*K masks in
//                    registers, and the 4 partial sums of a pixel are added
//                    with warp shuffles (carafe_tiled_grad_features_quad.cuh).
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

// CARAFE_TILE_THREADS_X/_Y and CARAFE_CHANNEL_BATCH_MAX (channels staged per
// barrier pair; the launcher may pick fewer when the halo would not fit in shared
// memory) come from carafe_cupy/_kernels/constants.py.

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

__device__ __forceinline__ bool tap_inside(index_t row, index_t col, const carafe_geometry& g) {
    return row >= 0 && row < g.height && col >= 0 && col < g.width;
}

// Row pitch of the forward / grad_masks halo: the widest halo of a tile
// (s = 1, or s = 2 for pairs), so tap offsets are compile-time constants.
template <int K, int PAIR>
__device__ __forceinline__ constexpr int tile_pitch() {
    return (CARAFE_TILE_THREADS_X * PAIR - 1 + PAIR - 1) / PAIR + K;
}

// ---------------------------------------------------------------- kernels

#include "carafe_tiled_forward.cuh"
#include "carafe_tiled_forward_quad.cuh"
#include "carafe_tiled_grad_masks.cuh"
#include "carafe_tiled_grad_masks_quad.cuh"
#include "carafe_tiled_grad_features.cuh"
#include "carafe_tiled_grad_features_quad.cuh"

// ---------------------------------------------------------------- entry points
// All tiled kernels take 4 pointers (a, b, c, out), the geometry, 4 stride
// sets and 2 tiling arguments; unused pointers are passed as 0.
#define CARAFE_TILED_PARAMS(scalar_t)                                                         \
    const scalar_t *a, const scalar_t *b, const scalar_t *c, scalar_t *out,                   \
        CARAFE_GEOMETRY_PARAMS, CARAFE_STRIDE_PARAMS(a), CARAFE_STRIDE_PARAMS(b),             \
        CARAFE_STRIDE_PARAMS(c), CARAFE_STRIDE_PARAMS(o), index_t channels_per_block,         \
        index_t channel_batch

// grad_features: two blocks per SM (128 registers) where the K * K masks of a
// 4-byte accumulator leave room; larger K and fp64 keep one.
// (A constant, not a macro: the simulator reads launch bounds without nested parentheses.)
template <typename scalar_t, int K>
constexpr int carafe_two_blocks_min =
    K <= 5 && sizeof(typename storage<scalar_t>::acc_t) == 4 ? 2 : 1;

// grad_masks 2 x 2, every kernel row a block: 4 * K * K sums, two blocks an SM
// for K = 3 (128 registers), one for K = 5.
template <int K>
constexpr int carafe_masks_quad_blocks_min = K <= 3 ? 2 : 1;

#define CARAFE_DEFINE_TILED_FORWARD_K(suffix, scalar_t, K, PAIR)                               \
    extern "C" __global__ void __launch_bounds__(256, 1)                                           \
        carafe_forward_tiled_k##K##_p##PAIR##_##suffix(CARAFE_TILED_PARAMS(scalar_t)) {        \
        carafe_forward_tiled_impl<scalar_t, K, false>(                                   \
            a, b, out, CARAFE_GEOMETRY, CARAFE_STRIDES(a), CARAFE_STRIDES(b),                  \
            CARAFE_STRIDES(o), channels_per_block, (int)channel_batch);                        \
    }

#define CARAFE_DEFINE_TILED_K(suffix, scalar_t, K, PAIR)                                       \
    CARAFE_DEFINE_TILED_FORWARD_K(suffix, scalar_t, K, PAIR)                                   \
    extern "C" __global__ void __launch_bounds__(256, 1)                                           \
        carafe_backward_masks_tiled_k##K##_p##PAIR##_##suffix(CARAFE_TILED_PARAMS(scalar_t)) { \
        carafe_backward_masks_tiled_impl<scalar_t, K, false>(                                  \
            a, b, c, out, CARAFE_GEOMETRY, CARAFE_STRIDES(a), CARAFE_STRIDES(b),               \
            CARAFE_STRIDES(c), CARAFE_STRIDES(o), channels_per_block, (int)channel_batch);                         \
    }

// grad_features with four input pixels per thread (s = 2, K <= 5, 4-byte
// accumulators; the fused kernel would spill, and keeps one pixel): blocks of
// 128 threads, carafe_features_quad_blocks_min of them per SM.
#define CARAFE_DEFINE_FEATURES_QUAD_K(suffix, scalar_t, K)                                     \
    extern "C" __global__ void __launch_bounds__(128,                                          \
                                                 carafe_features_quad_blocks_min<scalar_t, K>) \
        carafe_backward_features_tiled_k##K##_p4_##suffix(CARAFE_TILED_PARAMS(scalar_t)) {     \
        carafe_backward_features_quad_impl<scalar_t, K>(                                       \
            a, b, out, CARAFE_GEOMETRY, CARAFE_STRIDES(a), CARAFE_STRIDES(b),                  \
            CARAFE_STRIDES(o), channels_per_block, (int)channel_batch);                        \
    }

#define CARAFE_DEFINE_TILED_K_SINGLE(suffix, scalar_t, K)                                      \
    CARAFE_DEFINE_TILED_K(suffix, scalar_t, K, 1)                                              \
    extern "C" __global__ void __launch_bounds__(256, carafe_two_blocks_min<scalar_t, K>)    \
        carafe_backward_features_tiled_k##K##_##suffix(CARAFE_TILED_PARAMS(scalar_t)) {        \
        carafe_backward_features_tiled_impl<scalar_t, K, false>(                               \
            a, b, out, CARAFE_GEOMETRY, CARAFE_STRIDES(a), CARAFE_STRIDES(b),                  \
            CARAFE_STRIDES(o), channels_per_block, (int)channel_batch);                        \
    }

// Even s, pair-aligned tensors: the forward's and grad_masks' 2 x 2 pixels per
// thread (carafe_tiled_forward_quad.cuh, carafe_tiled_grad_masks_quad.cuh); the
// forward's blocks of 32 x CARAFE_FORWARD_QUAD_ROWS threads, several an SM.
#define CARAFE_DEFINE_TILED_PAIRS_K(suffix, scalar_t, K)                                       \
    extern "C" __global__ void __launch_bounds__(CARAFE_TILE_THREADS_X * CARAFE_FORWARD_QUAD_ROWS, \
                                                 CARAFE_FORWARD_QUAD_BLOCKS)                   \
        carafe_forward_tiled_k##K##_p4_##suffix(CARAFE_TILED_PARAMS(scalar_t)) {               \
        carafe_forward_quad_impl<scalar_t, K, false>(a, b, out, CARAFE_GEOMETRY,                \
                                                     CARAFE_STRIDES(a), CARAFE_STRIDES(b),      \
                                                     CARAFE_STRIDES(o), channels_per_block,     \
                                                     (int)channel_batch);                       \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(256, carafe_masks_quad_blocks_min<K>)         \
        carafe_backward_masks_tiled_k##K##_p4_##suffix(CARAFE_TILED_PARAMS(scalar_t)) {        \
        carafe_backward_masks_quad_impl<scalar_t, K, K>(                                       \
            a, b, out, CARAFE_GEOMETRY, CARAFE_STRIDES(a), CARAFE_STRIDES(b),                  \
            CARAFE_STRIDES(o), channels_per_block, (int)channel_batch);                        \
    }

// grad_masks 2 x 2 in one-kernel-row blocks (_r1, built for K = 5: the grids the
// whole-kernel blocks leave short), CARAFE_MASKS_ROW_BLOCKS of them an SM.
#define CARAFE_DEFINE_MASKS_ROW_K(suffix, scalar_t, K)                                         \
    extern "C" __global__ void __launch_bounds__(256, CARAFE_MASKS_ROW_BLOCKS)                 \
        carafe_backward_masks_tiled_k##K##_p4_r1_##suffix(CARAFE_TILED_PARAMS(scalar_t)) {     \
        carafe_backward_masks_quad_impl<scalar_t, K, 1>(                                       \
            a, b, out, CARAFE_GEOMETRY, CARAFE_STRIDES(a), CARAFE_STRIDES(b),                  \
            CARAFE_STRIDES(o), channels_per_block, (int)channel_batch);                        \
    }

// The fused forward with 2 x 2 pixels per thread (even s, pair-aligned output):
// the 2 x 2 forward's tile and blocks, four softmaxes per thread in registers,
// and each staged window value serves the four pixels.
#define CARAFE_DEFINE_FUSED_QUAD_K(suffix, scalar_t, K)                                        \
    extern "C" __global__ void __launch_bounds__(CARAFE_TILE_THREADS_X * CARAFE_FORWARD_QUAD_ROWS, \
                                                 CARAFE_FORWARD_QUAD_BLOCKS)                   \
        carafe_fused_forward_k##K##_p4_##suffix(CARAFE_TILED_PARAMS(scalar_t)) {               \
        carafe_forward_quad_impl<scalar_t, K, true>(a, b, out, CARAFE_GEOMETRY,                 \
                                                    CARAFE_STRIDES(a), CARAFE_STRIDES(b),       \
                                                    CARAFE_STRIDES(o), channels_per_block,      \
                                                    (int)channel_batch);                        \
    }

#define CARAFE_DEFINE_FUSED_K(suffix, scalar_t, K)                                             \
    extern "C" __global__ void __launch_bounds__(256, 1)                                           \
        carafe_fused_forward_k##K##_##suffix(CARAFE_TILED_PARAMS(scalar_t)) {                  \
        carafe_forward_tiled_impl<scalar_t, K, true>(                                       \
            a, b, out, CARAFE_GEOMETRY, CARAFE_STRIDES(a), CARAFE_STRIDES(b),                  \
            CARAFE_STRIDES(o), channels_per_block, (int)channel_batch);                        \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(256, 1)                                           \
        carafe_fused_backward_logits_k##K##_##suffix(CARAFE_TILED_PARAMS(scalar_t)) {          \
        carafe_backward_masks_tiled_impl<scalar_t, K, true>(                                   \
            a, b, c, out, CARAFE_GEOMETRY, CARAFE_STRIDES(a), CARAFE_STRIDES(b),               \
            CARAFE_STRIDES(c), CARAFE_STRIDES(o), channels_per_block, (int)channel_batch);                         \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(256, carafe_two_blocks_min<scalar_t, K>)    \
        carafe_fused_backward_features_k##K##_##suffix(CARAFE_TILED_PARAMS(scalar_t)) {        \
        carafe_backward_features_tiled_impl<scalar_t, K, true>(                                \
            a, b, out, CARAFE_GEOMETRY, CARAFE_STRIDES(a), CARAFE_STRIDES(b),                  \
            CARAFE_STRIDES(o), channels_per_block, (int)channel_batch);                        \
    }
