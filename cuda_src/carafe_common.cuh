// Shared helpers for the CARAFE kernels.
//
// No CUDA headers: NVRTC does not find them without an include path, and the
// same text must build for the CPU simulator. fp16/bf16 are stored as raw
// 16-bit patterns and converted bit-exactly (round to nearest even).
#pragma once

// Sizes shared with the planner (tile threads, channel batch, strips) are written
// ahead of this text by carafe_cupy/_kernels/sources.py from _kernels/constants.py.
#ifndef CARAFE_CONSTANTS_DEFINED
#error "compile the source that carafe_cupy._kernels.sources.kernel_source() returns"
#endif

typedef long long index_t;  // 64-bit: products of sizes can pass 2^31

struct half_bits {
    unsigned short bits;
};
struct bfloat16_bits {
    unsigned short bits;
};

// ---- conversion helpers: storage type <-> accumulation type ----

__device__ __forceinline__ float half_bits_to_float_software(unsigned short h) {
    const unsigned int sign = (unsigned int)(h & 0x8000u) << 16;
    const unsigned int exponent = (h >> 10) & 0x1Fu;
    const unsigned int mantissa = h & 0x3FFu;
    if (exponent == 0) {
        // zero or subnormal: value = mantissa * 2^-24, exact in float
        const float magnitude = (float)mantissa * 5.9604644775390625e-8f;
        return sign ? -magnitude : magnitude;
    }
    if (exponent == 31) {
        return __uint_as_float(sign | 0x7F800000u | (mantissa << 13));
    }
    return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

__device__ __forceinline__ unsigned short float_to_half_bits_software(float value) {
    const unsigned int x = __float_as_uint(value);
    const unsigned int sign = (x >> 16) & 0x8000u;
    const unsigned int magnitude = x & 0x7FFFFFFFu;
    if (magnitude >= 0x7F800000u) {  // inf or nan (keep nan quiet)
        return (unsigned short)(sign | 0x7C00u | (magnitude > 0x7F800000u ? 0x200u : 0u));
    }
    if (magnitude >= 0x477FF000u) {  // >= 65520 rounds to inf
        return (unsigned short)(sign | 0x7C00u);
    }
    if (magnitude < 0x38800000u) {  // below 2^-14: half subnormal or zero
        if (magnitude < 0x33000000u) {  // below 2^-25 (ties to even at 2^-25 give 0)
            return (unsigned short)sign;
        }
        const unsigned int exponent = magnitude >> 23;
        const unsigned int significand = (magnitude & 0x7FFFFFu) | 0x800000u;
        const unsigned int shift = 126u - exponent;  // 14..24
        unsigned int result = significand >> shift;
        const unsigned int remainder = significand & ((1u << shift) - 1u);
        const unsigned int halfway = 1u << (shift - 1u);
        if (remainder > halfway || (remainder == halfway && (result & 1u))) {
            ++result;
        }
        return (unsigned short)(sign | result);
    }
    unsigned int result = (magnitude >> 13) - (112u << 10);
    const unsigned int remainder = magnitude & 0x1FFFu;
    if (remainder > 0x1000u || (remainder == 0x1000u && (result & 1u))) {
        ++result;  // a carry into the exponent is the correct rounding
    }
    return (unsigned short)(sign | result);
}

__device__ __forceinline__ float bfloat16_bits_to_float(unsigned short b) {
    return __uint_as_float((unsigned int)b << 16);
}

__device__ __forceinline__ unsigned short float_to_bfloat16_bits_software(float value) {
    const unsigned int x = __float_as_uint(value);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) {
        return (unsigned short)((x >> 16) | 0x40u);  // quiet nan
    }
    const unsigned int rounding = 0x7FFFu + ((x >> 16) & 1u);
    return (unsigned short)((x + rounding) >> 16);
}

// On the GPU the conversion instructions do the same rounding in one step
// (cvt.rn: nearest, ties to even, subnormals kept, overflow to infinity);
// the CPU simulator, compiling this file with g++, keeps the software path.
// Only a NaN's payload may differ (the hardware writes its canonical NaN).
__device__ __forceinline__ float half_bits_to_float(unsigned short h) {
#ifdef __CUDA_ARCH__
    float value;
    asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(h));
    return value;
#else
    return half_bits_to_float_software(h);
#endif
}

__device__ __forceinline__ unsigned short float_to_half_bits(float value) {
#ifdef __CUDA_ARCH__
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(value));
    return h;
#else
    return float_to_half_bits_software(value);
#endif
}

__device__ __forceinline__ unsigned short float_to_bfloat16_bits(float value) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned short b;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(value));
    return b;
#else
    return float_to_bfloat16_bits_software(value);  // sm_75 has no bf16 conversion
#endif
}

// Storage traits: how to load a scalar into the accumulator type and back.
template <typename scalar_t>
struct storage;

// raw_t / load_raw / widen split a load from its conversion, so a predicated
// load can be followed by an unconditional conversion (see load_or_zero).
template <>
struct storage<float> {
    typedef float acc_t;
    typedef float raw_t;
    static __device__ __forceinline__ float load_raw(const float* p) { return *p; }
    static __device__ __forceinline__ float widen(float raw) { return raw; }
    static __device__ __forceinline__ float load(const float* p) { return *p; }
    static __device__ __forceinline__ void store(float* p, float v) { *p = v; }
};

template <>
struct storage<double> {
    typedef double acc_t;
    typedef double raw_t;
    static __device__ __forceinline__ double load_raw(const double* p) { return *p; }
    static __device__ __forceinline__ double widen(double raw) { return raw; }
    static __device__ __forceinline__ double load(const double* p) { return *p; }
    static __device__ __forceinline__ void store(double* p, double v) { *p = v; }
};

template <>
struct storage<half_bits> {
    typedef float acc_t;
    typedef unsigned short raw_t;
    static __device__ __forceinline__ unsigned short load_raw(const half_bits* p) { return p->bits; }
    static __device__ __forceinline__ float widen(unsigned short raw) {
        return half_bits_to_float(raw);
    }
    static __device__ __forceinline__ float load(const half_bits* p) {
        return half_bits_to_float(p->bits);
    }
    static __device__ __forceinline__ void store(half_bits* p, float v) {
        p->bits = float_to_half_bits(v);
    }
};

template <>
struct storage<bfloat16_bits> {
    typedef float acc_t;
    typedef unsigned short raw_t;
    static __device__ __forceinline__ unsigned short load_raw(const bfloat16_bits* p) {
        return p->bits;
    }
    static __device__ __forceinline__ float widen(unsigned short raw) {
        return bfloat16_bits_to_float(raw);
    }
    static __device__ __forceinline__ float load(const bfloat16_bits* p) {
        return bfloat16_bits_to_float(p->bits);
    }
    static __device__ __forceinline__ void store(bfloat16_bits* p, float v) {
        p->bits = float_to_bfloat16_bits(v);
    }
};

// *p where `ok`, else 0: only the load is predicated (zero bits are +0 in
// every storage type), so the loads of a batch issue back to back and their
// conversions follow.
template <typename scalar_t>
__device__ __forceinline__ typename storage<scalar_t>::acc_t load_or_zero(const scalar_t* p,
                                                                           bool ok) {
    typename storage<scalar_t>::raw_t raw = 0;
    if (ok) raw = storage<scalar_t>::load_raw(p);
    return storage<scalar_t>::widen(raw);
}

// Flat index of the current thread and the grid-stride step, both 64-bit.
__device__ __forceinline__ index_t global_thread_index() {
    return (index_t)blockIdx.x * (index_t)blockDim.x + (index_t)threadIdx.x;
}

__device__ __forceinline__ index_t grid_stride() {
    return (index_t)gridDim.x * (index_t)blockDim.x;
}

// Shape of one CARAFE problem, as passed to every kernel.
struct carafe_geometry {
    index_t batch, channels, height, width;
    index_t kernel_size, group_size, scale_factor;
};

// Element strides of a 4-D tensor (N, C, H, W order), in elements.
struct strides4 {
    index_t n, c, h, w;
};

// Flat extern "C" entry points: 3 pointers, 7 sizes, then 3 x 4 element strides.
#define CARAFE_GEOMETRY_PARAMS                                                          \
    index_t batch, index_t channels, index_t height, index_t width, index_t kernel_size, \
        index_t group_size, index_t scale_factor
#define CARAFE_STRIDE_PARAMS(prefix) \
    index_t prefix##_sn, index_t prefix##_sc, index_t prefix##_sh, index_t prefix##_sw
#define CARAFE_GEOMETRY \
    carafe_geometry { batch, channels, height, width, kernel_size, group_size, scale_factor }
#define CARAFE_STRIDES(prefix) \
    strides4 { prefix##_sn, prefix##_sc, prefix##_sh, prefix##_sw }
