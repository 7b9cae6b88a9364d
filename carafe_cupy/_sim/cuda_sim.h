// cuda_sim.h -- CPU shim that lets CUDA C++ kernel sources compile with g++.
//
// Force-included (g++ -include cuda_sim.h) in front of a kernel module by
// carafe_cupy/_sim/build.py. The module, followed by a generated table of
// its extern "C" __global__ kernels, is linked with cuda_sim_runtime.cpp (the
// fiber scheduler, compiled once and cached as an object file).
//
// Execution model: blocks run one after another on the calling OS thread; the
// threads of a block run as fibers, switched at __syncthreads / warp
// primitives. Because only one block is live at a time, `__shared__` can
// simply mean `static` (one copy per kernel / template instantiation).
// Static shared memory and the dynamic shared buffer are filled with 0xFF
// bytes (NaN for float, -1 for ints) at the start of every block, so reading
// shared memory before writing it gives visibly wrong results.
//
// Dynamic shared memory -- two spellings are supported:
//   1. CARAFE_DYNAMIC_SHARED(T, name);
//        declares `T* name` pointing at the launch's dynamic shared buffer
//        (aligned to 256 bytes). Portable kernels should use this macro and
//        define it for real CUDA when it is not already defined:
//          #ifndef CARAFE_DYNAMIC_SHARED
//          #define CARAFE_DYNAMIC_SHARED(T, name) \
//            extern __shared__ __align__(16) unsigned char name##_raw_[]; \
//            T* name = reinterpret_cast<T*>(name##_raw_)
//          #endif
//   2. `extern __shared__ T name[];` (optionally with __align__(n)) inside a
//        function body: build.py rewrites it to the macro above before
//        compiling, so unmodified CUDA sources work too.
//
// CARAFE_SIMULATOR is defined to 1 so sources can branch if they must.
#pragma once

#define CARAFE_SIMULATOR 1

#include <bit>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ __inline__ __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// A named section lets the runtime find (and poison) all static shared memory
// through the linker-provided __start_/__stop_ symbols.
#define __shared__ static __attribute__((section("carafe_sim_shared"), aligned(16)))

#define CARAFE_DYNAMIC_SHARED(T, name) \
  T* name = reinterpret_cast<T*>(::carafe_sim::dynamic_shared_ptr())

#define CARAFE_SIM_HIDDEN __attribute__((visibility("hidden")))

// ---------------------------------------------------------------- vector types
struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define CARAFE_SIM_VEC2(T, N, A)                                            \
  struct __attribute__((aligned(A))) N { T x, y; };                         \
  static inline N make_##N(T x, T y) { return N{x, y}; }
#define CARAFE_SIM_VEC3(T, N)                                               \
  struct N { T x, y, z; };                                                  \
  static inline N make_##N(T x, T y, T z) { return N{x, y, z}; }
#define CARAFE_SIM_VEC4(T, N, A)                                            \
  struct __attribute__((aligned(A))) N { T x, y, z, w; };                   \
  static inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
CARAFE_SIM_VEC2(float, float2, 8)
CARAFE_SIM_VEC3(float, float3)
CARAFE_SIM_VEC4(float, float4, 16)
CARAFE_SIM_VEC2(int, int2, 8)
CARAFE_SIM_VEC3(int, int3)
CARAFE_SIM_VEC4(int, int4, 16)
CARAFE_SIM_VEC2(unsigned int, uint2, 8)
CARAFE_SIM_VEC4(unsigned int, uint4, 16)
CARAFE_SIM_VEC2(double, double2, 16)
static inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }
#undef CARAFE_SIM_VEC2
#undef CARAFE_SIM_VEC3
#undef CARAFE_SIM_VEC4

// ------------------------------------------------------------ built-in values
// Extern hidden globals (defined in cuda_sim_runtime.cpp): the compiler must
// assume the opaque context switch changes them, so nothing is cached across
// a barrier.
extern CARAFE_SIM_HIDDEN uint3 threadIdx;
extern CARAFE_SIM_HIDDEN uint3 blockIdx;
extern CARAFE_SIM_HIDDEN dim3 blockDim;
extern CARAFE_SIM_HIDDEN dim3 gridDim;
static constexpr int warpSize = 32;

// --------------------------------------------------- scheduler entry points
namespace carafe_sim {
enum WarpOp : int { OP_SYNC = 0, OP_IDX, OP_UP, OP_DOWN, OP_XOR, OP_BALLOT, OP_ANY, OP_ALL };
enum BarrierKind : int { BAR_PLAIN = 0, BAR_COUNT, BAR_AND, BAR_OR };
CARAFE_SIM_HIDDEN __attribute__((noinline)) int block_barrier(
    int kind, int pred, const std::source_location& loc);
CARAFE_SIM_HIDDEN __attribute__((noinline)) uint64_t warp_op(
    unsigned mask, int op, uint64_t value, int param, int width, const char* name,
    const std::source_location& loc);
CARAFE_SIM_HIDDEN void* dynamic_shared_ptr();
CARAFE_SIM_HIDDEN unsigned active_mask();
CARAFE_SIM_HIDDEN unsigned lane_id();

template <class T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>,
                "warp shuffles support trivially copyable types up to 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
}  // namespace carafe_sim

// ------------------------------------------------------------ synchronisation
using carafe_sim_loc = std::source_location;
#define CARAFE_SIM_LOC const carafe_sim_loc& loc = carafe_sim_loc::current()

inline void __syncthreads(CARAFE_SIM_LOC) {
  carafe_sim::block_barrier(carafe_sim::BAR_PLAIN, 0, loc);
}
inline int __syncthreads_count(int pred, CARAFE_SIM_LOC) {
  return carafe_sim::block_barrier(carafe_sim::BAR_COUNT, pred != 0, loc);
}
inline int __syncthreads_and(int pred, CARAFE_SIM_LOC) {
  return carafe_sim::block_barrier(carafe_sim::BAR_AND, pred != 0, loc);
}
inline int __syncthreads_or(int pred, CARAFE_SIM_LOC) {
  return carafe_sim::block_barrier(carafe_sim::BAR_OR, pred != 0, loc);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, CARAFE_SIM_LOC) {
  carafe_sim::warp_op(mask, carafe_sim::OP_SYNC, 0, 0, 32, "__syncwarp", loc);
}
template <class T>
inline T __shfl_sync(unsigned mask, T var, int src, int width = warpSize, CARAFE_SIM_LOC) {
  return carafe_sim::from_bits<T>(carafe_sim::warp_op(
      mask, carafe_sim::OP_IDX, carafe_sim::to_bits(var), src, width, "__shfl_sync", loc));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                        CARAFE_SIM_LOC) {
  return carafe_sim::from_bits<T>(carafe_sim::warp_op(mask, carafe_sim::OP_UP,
                                                      carafe_sim::to_bits(var), int(delta),
                                                      width, "__shfl_up_sync", loc));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                          CARAFE_SIM_LOC) {
  return carafe_sim::from_bits<T>(carafe_sim::warp_op(mask, carafe_sim::OP_DOWN,
                                                      carafe_sim::to_bits(var), int(delta),
                                                      width, "__shfl_down_sync", loc));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                         CARAFE_SIM_LOC) {
  return carafe_sim::from_bits<T>(carafe_sim::warp_op(mask, carafe_sim::OP_XOR,
                                                      carafe_sim::to_bits(var), lane_mask,
                                                      width, "__shfl_xor_sync", loc));
}
inline unsigned __ballot_sync(unsigned mask, int pred, CARAFE_SIM_LOC) {
  return unsigned(carafe_sim::warp_op(mask, carafe_sim::OP_BALLOT, pred != 0, 0, 32,
                                      "__ballot_sync", loc));
}
inline int __any_sync(unsigned mask, int pred, CARAFE_SIM_LOC) {
  return int(carafe_sim::warp_op(mask, carafe_sim::OP_ANY, pred != 0, 0, 32, "__any_sync", loc));
}
inline int __all_sync(unsigned mask, int pred, CARAFE_SIM_LOC) {
  return int(carafe_sim::warp_op(mask, carafe_sim::OP_ALL, pred != 0, 0, 32, "__all_sync", loc));
}
inline unsigned __activemask() { return carafe_sim::active_mask(); }
#undef CARAFE_SIM_LOC

// Blocks run one at a time on one OS thread, so fences only need to stop the
// compiler from reordering.
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
[[noreturn]] inline void __trap() { __builtin_trap(); }

template <class T>
inline T __ldg(const T* p) { return *p; }

// ------------------------------------------------------------------- atomics
// GCC __atomic builtins (what std::atomic_ref compiles to) keep <atomic> out of
// every module build. Blocks run one at a time, so relaxed ordering suffices.
namespace carafe_sim {
template <class T, class F>
inline T atomic_update(T* address, F f) {
  T old;
  __atomic_load(address, &old, __ATOMIC_RELAXED);
  T desired = f(old);
  while (!__atomic_compare_exchange(address, &old, &desired, true, __ATOMIC_SEQ_CST,
                                    __ATOMIC_RELAXED))
    desired = f(old);
  return old;
}
}  // namespace carafe_sim
#define CARAFE_SIM_ATOMIC_INT(T)                                                           \
  inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }     \
  inline T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }     \
  inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }   \
  inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); }     \
  inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }       \
  inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); }     \
  inline T atomicMax(T* a, T v) {                                                          \
    return carafe_sim::atomic_update(a, [v](T o) { return o < v ? v : o; });              \
  }                                                                                        \
  inline T atomicMin(T* a, T v) {                                                          \
    return carafe_sim::atomic_update(a, [v](T o) { return v < o ? v : o; });              \
  }                                                                                        \
  inline T atomicCAS(T* a, T compare, T val) {                                             \
    __atomic_compare_exchange_n(a, &compare, val, false, __ATOMIC_SEQ_CST,                 \
                                __ATOMIC_SEQ_CST);                                         \
    return compare;                                                                        \
  }
CARAFE_SIM_ATOMIC_INT(int)
CARAFE_SIM_ATOMIC_INT(unsigned int)
CARAFE_SIM_ATOMIC_INT(unsigned long long)
#undef CARAFE_SIM_ATOMIC_INT
inline long long atomicMax(long long* a, long long v) {
  return carafe_sim::atomic_update(a, [v](long long o) { return o < v ? v : o; });
}
inline long long atomicMin(long long* a, long long v) {
  return carafe_sim::atomic_update(a, [v](long long o) { return v < o ? v : o; });
}
inline unsigned short atomicCAS(unsigned short* a, unsigned short compare, unsigned short val) {
  __atomic_compare_exchange_n(a, &compare, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return compare;
}
inline float atomicAdd(float* a, float v) {
  return carafe_sim::atomic_update(a, [v](float o) { return o + v; });
}
inline double atomicAdd(double* a, double v) {
  return carafe_sim::atomic_update(a, [v](double o) { return o + v; });
}
inline float atomicExch(float* a, float v) {
  float old;
  __atomic_exchange(a, &v, &old, __ATOMIC_SEQ_CST);
  return old;
}
inline unsigned int atomicInc(unsigned int* a, unsigned int v) {
  return carafe_sim::atomic_update(a, [v](unsigned o) { return o >= v ? 0u : o + 1u; });
}
inline unsigned int atomicDec(unsigned int* a, unsigned int v) {
  return carafe_sim::atomic_update(a, [v](unsigned o) { return (o == 0u || o > v) ? v : o - 1u; });
}

// ---------------------------------------------------------- min / max / math
template <class A, class B,
          std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>, int> = 0>
inline constexpr std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(b) < C(a) ? C(b) : C(a);
}
template <class A, class B,
          std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>, int> = 0>
inline constexpr std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(b) : C(a);
}
inline unsigned umin(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned umax(unsigned a, unsigned b) { return a < b ? b : a; }
inline long long llmin(long long a, long long b) { return a < b ? a : b; }
inline long long llmax(long long a, long long b) { return a < b ? b : a; }

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x != x ? 0.0f : x)); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline int __float2int_rn(float x) { return int(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return int(x); }
inline int __float2int_rd(float x) { return int(std::floor(x)); }
inline int __float2int_ru(float x) { return int(std::ceil(x)); }
inline unsigned __float2uint_rn(float x) { return unsigned(std::nearbyint(x)); }
inline unsigned __float2uint_rz(float x) { return unsigned(x); }
inline float __int2float_rn(int x) { return float(x); }
inline float __uint2float_rn(unsigned x) { return float(x); }
inline float __double2float_rn(double x) { return float(x); }

inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
  return __builtin_bswap32(x);
}
inline int __mul24(int a, int b) { return a * b; }
inline unsigned __umul24(unsigned a, unsigned b) { return a * b; }
inline int __mulhi(int a, int b) { return int((long long)a * b >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return unsigned((unsigned long long)a * b >> 32);
}

// Bring the float/double <cmath> functions into the global namespace the way
// CUDA's math headers do (expf, fmaf, sqrtf, ... are already there).
using std::abs;
using std::fabs;
using std::isfinite;
using std::isinf;
using std::isnan;

// ------------------------------------------------------------ kernel table
namespace carafe_sim {
struct KernelEntry {
  const char* name;
  void* fn;
  void (*thunk)(void* fn, void** args);
  int nparams;
  const unsigned long long* sizes;
  const bool* pointers;  // which parameters are pointers
};

template <class T>
inline T arg_cast(void* p) {
  if constexpr (std::is_pointer_v<T>) {
    uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return reinterpret_cast<T>(static_cast<uintptr_t>(v));
  } else {
    T v;
    std::memcpy(static_cast<void*>(&v), p, sizeof(T));
    return v;
  }
}
template <class... A, size_t... I>
inline void invoke_impl(void (*f)(A...), void** a, std::index_sequence<I...>) {
  f(arg_cast<A>(a[I])...);
}
template <class... A>
void thunk(void* fn, void** args) {
  invoke_impl(reinterpret_cast<void (*)(A...)>(fn), args, std::index_sequence_for<A...>{});
}
template <class... A>
inline const unsigned long long param_sizes[] = {sizeof(A)..., 0ull};
template <class... A>
inline const bool param_pointers[] = {std::is_pointer_v<A>..., false};
template <class... A>
constexpr KernelEntry make_entry(const char* name, void (*f)(A...)) {
  return KernelEntry{name, reinterpret_cast<void*>(f), &thunk<A...>, int(sizeof...(A)),
                     param_sizes<A...>, param_pointers<A...>};
}

}  // namespace carafe_sim

// ------------------------------------------------------ host entry (glue)
// The generated glue lists the module's kernels in a table and expands this.
namespace carafe_sim {
CARAFE_SIM_HIDDEN int launch(const KernelEntry* e, const char* kernel, const unsigned* grid,
                             const unsigned* block, unsigned long long shared_bytes, void** args,
                             int order, unsigned long long seed, unsigned long long stack_size,
                             char* err, unsigned long long err_len, bool may_block);
}  // namespace carafe_sim
extern "C" __attribute__((visibility("default"))) int carafe_sim_kernel_params(
    const char* kernel, unsigned long long* sizes, int max_params);
extern "C" __attribute__((visibility("default"))) int carafe_sim_launch(
    const char* kernel, const unsigned* grid, const unsigned* block,
    unsigned long long shared_bytes, void** args, int order, unsigned long long seed,
    unsigned long long stack_size, char* err, unsigned long long err_len);

#define CARAFE_SIM_DEFINE_ENTRY_POINTS(TABLE, COUNT, MAY_BLOCK)                              \
  static const carafe_sim::KernelEntry* carafe_sim_find(const char* name) {                 \
    for (int i = 0; i < (COUNT); ++i)                                                        \
      if (std::strcmp((TABLE)[i].name, name) == 0) return &(TABLE)[i];                       \
    return nullptr;                                                                          \
  }                                                                                          \
  int carafe_sim_kernel_params(const char* kernel, unsigned long long* sizes,                \
                               int max_params) {                                             \
    const carafe_sim::KernelEntry* e = carafe_sim_find(kernel);                              \
    if (!e) return -1;                                                                       \
    for (int i = 0; i < e->nparams && i < max_params; ++i) sizes[i] = e->sizes[i];           \
    return e->nparams;                                                                       \
  }                                                                                          \
  int carafe_sim_launch(const char* kernel, const unsigned* grid, const unsigned* block,     \
                        unsigned long long shared_bytes, void** args, int order,             \
                        unsigned long long seed, unsigned long long stack_size, char* err,   \
                        unsigned long long err_len) {                                        \
    return carafe_sim::launch(carafe_sim_find(kernel), kernel, grid, block, shared_bytes,    \
                              args, order, seed, stack_size, err, err_len, (MAY_BLOCK));     \
  }

