// Reassembly forward and backward: CARAFE (mmcv semantics) with a window
// stride t and dilation d, for content-aware downsampling and involution.
//
//   out[n, c, y, x] = sum_{i, j} masks[n, g*k*k + i*k + j, y, x]
//                                * features[n, c, (y/s)*t + (i - r)*d, (x/s)*t + (j - r)*d]
//   g = c / (C / G), r = (k - 1) / 2, taps outside the input are zero;
//   the output is ceil(H/t)*s x ceil(W/t)*s (at most one of s and t exceeds 1).
//
// One thread per output element (forward), per input element (grad_features)
// and per mask element (grad_masks). Both gradients are gathers with a fixed
// summation order, so results are bitwise reproducible (no atomics). Sizes and
// element strides are arguments: any layout, one compile per dtype.
#include "carafe_common.cuh"

// The general kernels' geometry: CARAFE's seven sizes, then stride and dilation.
struct reassembly_geometry {
    index_t batch, channels, height, width;
    index_t kernel_size, group_size, scale_factor, stride, dilation;
};

#define REASSEMBLY_GEOMETRY_PARAMS CARAFE_GEOMETRY_PARAMS, index_t stride, index_t dilation
#define REASSEMBLY_GEOMETRY                                                                \
    reassembly_geometry {                                                                  \
        batch, channels, height, width, kernel_size, group_size, scale_factor, stride,     \
            dilation                                                                       \
    }

// Window centers per column (row): every t-th input pixel, ceil(size / t) of them.
__device__ __forceinline__ index_t center_count(index_t size, index_t stride) {
    return (size + stride - 1) / stride;
}

// A thread's strip of channels: up to WIDTH consecutive channels of one group,
// which share the group's kernel weights, so each weight is loaded once for the
// strip. Four in the forward, two in grad_features (more would pass 96 registers);
// FORWARD_CHANNEL_STRIP and GRAD_FEATURES_CHANNEL_STRIP come from
// carafe_cupy/_kernels/constants.py, which the planner reads too.

struct channel_strip {
    index_t n, group, first_channel;
    index_t count;  // channels in the strip: WIDTH but at a group's end
};

// ``rest`` numbers (n, group, strip) with the strip fastest.
template <index_t WIDTH>
__device__ __forceinline__ channel_strip locate_strip(const index_t rest, const reassembly_geometry& g,
                                                      const index_t channels_per_group) {
    const index_t strips_per_group = (channels_per_group + WIDTH - 1) / WIDTH;
    const index_t strips = g.group_size * strips_per_group;
    const index_t strip = rest % strips;
    const index_t group = strip / strips_per_group;
    const index_t offset = strip % strips_per_group * WIDTH;
    const index_t left = channels_per_group - offset;
    return channel_strip{rest / strips, group, group * channels_per_group + offset,
                         left < WIDTH ? left : WIDTH};
}

template <typename scalar_t>
__device__ void carafe_forward_impl(const scalar_t* __restrict__ features,
                                    const scalar_t* __restrict__ masks,
                                    scalar_t* __restrict__ output, const reassembly_geometry g,
                                    const strides4 feature_strides, const strides4 mask_strides,
                                    const strides4 output_strides) {
    typedef typename storage<scalar_t>::acc_t acc_t;
    const index_t out_height = center_count(g.height, g.stride) * g.scale_factor;
    const index_t out_width = center_count(g.width, g.stride) * g.scale_factor;
    const index_t channels_per_group = g.channels / g.group_size;
    const index_t strips_per_group =
        (channels_per_group + FORWARD_CHANNEL_STRIP - 1) / FORWARD_CHANNEL_STRIP;
    const index_t total = g.batch * g.group_size * strips_per_group * out_height * out_width;
    const index_t taps = g.kernel_size * g.kernel_size;
    const index_t radius = (g.kernel_size - 1) / 2;

    for (index_t index = global_thread_index(); index < total; index += grid_stride()) {
        const index_t x = index % out_width;
        index_t rest = index / out_width;
        const index_t y = rest % out_height;
        const channel_strip strip =
            locate_strip<FORWARD_CHANNEL_STRIP>(rest / out_height, g, channels_per_group);
        // the window's first row and column: taps are d apart around the center
        const index_t top = y / g.scale_factor * g.stride - radius * g.dilation;
        const index_t left = x / g.scale_factor * g.stride - radius * g.dilation;

        const scalar_t* feature_plane = features + strip.n * feature_strides.n +
                                        strip.first_channel * feature_strides.c;
        const scalar_t* mask_pixel = masks + strip.n * mask_strides.n +
                                     strip.group * taps * mask_strides.c + y * mask_strides.h +
                                     x * mask_strides.w;
        acc_t sum[FORWARD_CHANNEL_STRIP];
#pragma unroll
        for (index_t cc = 0; cc < FORWARD_CHANNEL_STRIP; ++cc) sum[cc] = 0;
        for (index_t i = 0; i < g.kernel_size; ++i) {
            const index_t feature_y = top + i * g.dilation;
            if (feature_y < 0 || feature_y >= g.height) continue;
            const scalar_t* feature_row = feature_plane + feature_y * feature_strides.h;
            // not unrolled: each tap already issues a strip of loads
#pragma unroll 1
            for (index_t j = 0; j < g.kernel_size; ++j) {
                const index_t feature_x = left + j * g.dilation;
                if (feature_x < 0 || feature_x >= g.width) continue;
                const acc_t weight =
                    storage<scalar_t>::load(mask_pixel + (i * g.kernel_size + j) * mask_strides.c);
                const scalar_t* feature = feature_row + feature_x * feature_strides.w;
#pragma unroll
                for (index_t cc = 0; cc < FORWARD_CHANNEL_STRIP; ++cc) {
                    if (cc < strip.count) {
                        sum[cc] += weight * storage<scalar_t>::load(feature + cc * feature_strides.c);
                    }
                }
            }
        }
        scalar_t* out = output + strip.n * output_strides.n +
                        strip.first_channel * output_strides.c + y * output_strides.h +
                        x * output_strides.w;
#pragma unroll
        for (index_t cc = 0; cc < FORWARD_CHANNEL_STRIP; ++cc) {
            if (cc < strip.count) storage<scalar_t>::store(out + cc * output_strides.c, sum[cc]);
        }
    }
}

// grad_features[n, c, h, w]: every output pixel whose window covers (h, w).
// Tap (i, j) of output (y, x) reads (h, w) iff (y/s)*t == h - (i - r)*d and
// (x/s)*t == w - (j - r)*d: per tap, at most one window center, where t divides.
// Taps tap_step = t / gcd(d, t) apart share their remainder by t, so after the
// first tap whose center t divides, every tap_step-th one has a center too,
// center_step = d * tap_step / t nearer: the loops visit only those taps, in
// increasing order, with no 64-bit division inside them.
struct tap_walk {
    index_t tap_step, center_step;
    index_t step_quotient, step_remainder;  // d = step_quotient * t + step_remainder
};

__device__ __forceinline__ index_t greatest_common_divisor(index_t a, index_t b) {
    while (b != 0) {
        const index_t rest = a % b;
        a = b;
        b = rest;
    }
    return a;
}

__device__ __forceinline__ tap_walk make_tap_walk(const index_t dilation, const index_t t) {
    const index_t tap_step = t / greatest_common_divisor(dilation, t);
    return tap_walk{tap_step, dilation * tap_step / t, dilation / t, dilation % t};
}

// The first tap (0 <= tap < tap_step) whose center t divides, and that center, for
// the input row (or column) ``position``; kernel_size when no tap has one.
__device__ __forceinline__ index_t first_tap(const index_t position, const index_t radius,
                                             const index_t kernel_size, const index_t dilation,
                                             const index_t t, const tap_walk walk,
                                             index_t& center) {
    const index_t reach = position + radius * dilation;  // tap 0: center * t + remainder
    center = reach / t;
    index_t remainder = reach % t;
    for (index_t tap = 0; tap < walk.tap_step && tap < kernel_size; ++tap) {
        if (remainder == 0) return tap;
        center -= walk.step_quotient;  // the next tap lowers the reach by d
        remainder -= walk.step_remainder;
        if (remainder < 0) {
            remainder += t;
            --center;
        }
    }
    return kernel_size;
}

template <typename scalar_t>
__device__ void carafe_backward_features_impl(const scalar_t* __restrict__ grad_output,
                                              const scalar_t* __restrict__ masks,
                                              scalar_t* __restrict__ grad_features,
                                              const reassembly_geometry g,
                                              const strides4 grad_output_strides,
                                              const strides4 mask_strides,
                                              const strides4 grad_feature_strides) {
    typedef typename storage<scalar_t>::acc_t acc_t;
    const index_t channels_per_group = g.channels / g.group_size;
    const index_t strips_per_group =
        (channels_per_group + GRAD_FEATURES_CHANNEL_STRIP - 1) / GRAD_FEATURES_CHANNEL_STRIP;
    const index_t total = g.batch * g.group_size * strips_per_group * g.height * g.width;
    const index_t taps = g.kernel_size * g.kernel_size;
    const index_t radius = (g.kernel_size - 1) / 2;
    const index_t s = g.scale_factor;
    const index_t t = g.stride;
    const index_t center_rows = center_count(g.height, t);
    const index_t center_cols = center_count(g.width, t);
    const tap_walk walk = make_tap_walk(g.dilation, t);
    const index_t kernel_size = g.kernel_size;
    const index_t tap_step = walk.tap_step;

    for (index_t index = global_thread_index(); index < total; index += grid_stride()) {
        const index_t w = index % g.width;
        index_t rest = index / g.width;
        const index_t h = rest % g.height;
        const channel_strip strip =
            locate_strip<GRAD_FEATURES_CHANNEL_STRIP>(rest / g.height, g, channels_per_group);

        const scalar_t* grad_plane = grad_output + strip.n * grad_output_strides.n +
                                     strip.first_channel * grad_output_strides.c;
        const scalar_t* mask_group =
            masks + strip.n * mask_strides.n + strip.group * taps * mask_strides.c;
        scalar_t* target = grad_features + strip.n * grad_feature_strides.n +
                           strip.first_channel * grad_feature_strides.c +
                           h * grad_feature_strides.h + w * grad_feature_strides.w;
        // past the strip's end, loads read its last channel again (never stored)
        const index_t last = strip.count - 1;
        index_t first_center_y, first_center_x;
        const index_t first_i = first_tap(h, radius, g.kernel_size, g.dilation, t, walk, first_center_y);
        const index_t first_j = first_tap(w, radius, g.kernel_size, g.dilation, t, walk, first_center_x);
        // sub-pixels outermost: at s = 1 (every strided call) they cost one pass
        acc_t sum[GRAD_FEATURES_CHANNEL_STRIP];
#pragma unroll
        for (index_t cc = 0; cc < GRAD_FEATURES_CHANNEL_STRIP; ++cc) sum[cc] = 0;
#pragma unroll 1
        for (index_t sub_y = 0; sub_y < s; ++sub_y) {
#pragma unroll 1
            for (index_t sub_x = 0; sub_x < s; ++sub_x) {
                index_t center_y = first_center_y;
#pragma unroll 1
                for (index_t i = first_i; i < kernel_size; i += tap_step, center_y -= walk.center_step) {
                    if (center_y < 0 || center_y >= center_rows) continue;
                    const index_t y = center_y * s + sub_y;
                    const scalar_t* grad_row = grad_plane + y * grad_output_strides.h;
                    const scalar_t* mask_row =
                        mask_group + i * kernel_size * mask_strides.c + y * mask_strides.h;
                    index_t center_x = first_center_x;
#pragma unroll 1
                    for (index_t j = first_j; j < kernel_size; j += tap_step, center_x -= walk.center_step) {
                        if (center_x < 0 || center_x >= center_cols) continue;
                        const index_t x = center_x * s + sub_x;
                        const acc_t weight = storage<scalar_t>::load(mask_row + j * mask_strides.c +
                                                                     x * mask_strides.w);
                        const scalar_t* grad = grad_row + x * grad_output_strides.w;
#pragma unroll
                        for (index_t cc = 0; cc < GRAD_FEATURES_CHANNEL_STRIP; ++cc) {
                            const index_t channel = cc < last ? cc : last;
                            sum[cc] += storage<scalar_t>::load(grad + channel * grad_output_strides.c) *
                                       weight;
                        }
                    }
                }
            }
        }
#pragma unroll
        for (index_t cc = 0; cc < GRAD_FEATURES_CHANNEL_STRIP; ++cc) {
            if (cc <= last) storage<scalar_t>::store(target + cc * grad_feature_strides.c, sum[cc]);
        }
    }
}

// grad_masks[n, g*k*k + tap, y, x]: the tap's feature value times grad_output,
// summed over the group's channels. A thread takes a strip of TAP_STRIP
// consecutive taps of one pixel, so each grad_output value is loaded once for
// the strip. TAP_STRIP comes from carafe_cupy/_kernels/constants.py.

template <typename scalar_t>
__device__ void carafe_backward_masks_impl(const scalar_t* __restrict__ grad_output,
                                           const scalar_t* __restrict__ features,
                                           scalar_t* __restrict__ grad_masks,
                                           const reassembly_geometry g,
                                           const strides4 grad_output_strides,
                                           const strides4 feature_strides,
                                           const strides4 grad_mask_strides) {
    typedef typename storage<scalar_t>::acc_t acc_t;
    const index_t out_height = center_count(g.height, g.stride) * g.scale_factor;
    const index_t out_width = center_count(g.width, g.stride) * g.scale_factor;
    const index_t kernel_size = g.kernel_size;
    const index_t taps = kernel_size * kernel_size;
    const index_t strips = g.group_size * ((taps + TAP_STRIP - 1) / TAP_STRIP);
    const index_t total = g.batch * strips * out_height * out_width;
    const index_t channels_per_group = g.channels / g.group_size;
    const index_t radius = (kernel_size - 1) / 2;

    for (index_t index = global_thread_index(); index < total; index += grid_stride()) {
        const index_t x = index % out_width;
        index_t rest = index / out_width;
        const index_t y = rest % out_height;
        rest /= out_height;
        const index_t n = rest / strips;
        const index_t group = rest % strips / ((taps + TAP_STRIP - 1) / TAP_STRIP);
        const index_t first = rest % strips % ((taps + TAP_STRIP - 1) / TAP_STRIP) * TAP_STRIP;
        const index_t center_y = y / g.scale_factor * g.stride;
        const index_t center_x = x / g.scale_factor * g.stride;

        // each tap's offset in a feature plane; taps past the window or the input load nothing
        index_t offset[TAP_STRIP];
        bool inside[TAP_STRIP];
        bool any_inside = false;
#pragma unroll
        for (index_t tt = 0; tt < TAP_STRIP; ++tt) {
            const index_t tap = first + tt;
            const index_t feature_y = center_y + (tap / kernel_size - radius) * g.dilation;
            const index_t feature_x = center_x + (tap % kernel_size - radius) * g.dilation;
            inside[tt] = tap < taps && feature_y >= 0 && feature_y < g.height &&
                         feature_x >= 0 && feature_x < g.width;
            offset[tt] = inside[tt] ? feature_y * feature_strides.h + feature_x * feature_strides.w : 0;
            any_inside |= inside[tt];
        }
        acc_t sum[TAP_STRIP];
#pragma unroll
        for (index_t tt = 0; tt < TAP_STRIP; ++tt) sum[tt] = 0;
        if (any_inside) {
            const index_t first_channel = group * channels_per_group;
            const scalar_t* grad_pixel = grad_output + n * grad_output_strides.n +
                                         first_channel * grad_output_strides.c +
                                         y * grad_output_strides.h + x * grad_output_strides.w;
            const scalar_t* feature_plane =
                features + n * feature_strides.n + first_channel * feature_strides.c;
            // unrolled to keep eight channels' loads in flight
#pragma unroll 8
            for (index_t c = 0; c < channels_per_group; ++c) {
                const acc_t grad = storage<scalar_t>::load(grad_pixel);
#pragma unroll
                for (index_t tt = 0; tt < TAP_STRIP; ++tt) {
                    if (inside[tt]) sum[tt] += grad * storage<scalar_t>::load(feature_plane + offset[tt]);
                }
                grad_pixel += grad_output_strides.c;
                feature_plane += feature_strides.c;
            }
        }
        scalar_t* target = grad_masks + n * grad_mask_strides.n +
                           (group * taps + first) * grad_mask_strides.c + y * grad_mask_strides.h +
                           x * grad_mask_strides.w;
#pragma unroll
        for (index_t tt = 0; tt < TAP_STRIP; ++tt) {
            if (first + tt < taps) storage<scalar_t>::store(target + tt * grad_mask_strides.c, sum[tt]);
        }
    }
}

#define CARAFE_DEFINE_KERNELS(suffix, scalar_t)                                                 \
    extern "C" __global__ void carafe_forward_##suffix(                                         \
        const scalar_t* features, const scalar_t* masks, scalar_t* output,                      \
        REASSEMBLY_GEOMETRY_PARAMS, CARAFE_STRIDE_PARAMS(a), CARAFE_STRIDE_PARAMS(b),           \
        CARAFE_STRIDE_PARAMS(o)) {                                                              \
        carafe_forward_impl<scalar_t>(features, masks, output, REASSEMBLY_GEOMETRY,             \
                                      CARAFE_STRIDES(a), CARAFE_STRIDES(b), CARAFE_STRIDES(o)); \
    }                                                                                           \
    extern "C" __global__ void carafe_backward_features_##suffix(                               \
        const scalar_t* grad_output, const scalar_t* masks, scalar_t* grad_features,            \
        REASSEMBLY_GEOMETRY_PARAMS, CARAFE_STRIDE_PARAMS(a), CARAFE_STRIDE_PARAMS(b),           \
        CARAFE_STRIDE_PARAMS(o)) {                                                              \
        carafe_backward_features_impl<scalar_t>(grad_output, masks, grad_features,              \
                                                REASSEMBLY_GEOMETRY, CARAFE_STRIDES(a),         \
                                                CARAFE_STRIDES(b), CARAFE_STRIDES(o));          \
    }                                                                                           \
    extern "C" __global__ void carafe_backward_masks_##suffix(                                  \
        const scalar_t* grad_output, const scalar_t* features, scalar_t* grad_masks,            \
        REASSEMBLY_GEOMETRY_PARAMS, CARAFE_STRIDE_PARAMS(a), CARAFE_STRIDE_PARAMS(b),           \
        CARAFE_STRIDE_PARAMS(o)) {                                                              \
        carafe_backward_masks_impl<scalar_t>(grad_output, features, grad_masks,                 \
                                             REASSEMBLY_GEOMETRY, CARAFE_STRIDES(a),            \
                                             CARAFE_STRIDES(b), CARAFE_STRIDES(o));             \
    }

CARAFE_DEFINE_KERNELS(float32, float)
CARAFE_DEFINE_KERNELS(float64, double)
CARAFE_DEFINE_KERNELS(float16, half_bits)
CARAFE_DEFINE_KERNELS(bfloat16, bfloat16_bits)

