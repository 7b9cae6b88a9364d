// cuda_sim_trace_hooks.h -- the -fsanitize=thread hooks a traced module's kernel code calls.
//
// Included at the end of cuda_sim_trace.cpp, after on_access(). Every hook is
// hidden: each traced module resolves the calls to its own copy.
#pragma once

#define CARAFE_TSAN extern "C" __attribute__((visibility("hidden"), noinline))
#define CARAFE_TSAN_HOOK(NAME, N, WRITE) \
  CARAFE_TSAN void NAME(void* a) { on_access(uintptr_t(a), N, WRITE, __builtin_return_address(0)); }
#define CARAFE_TSAN_ACCESS(N)                              \
  CARAFE_TSAN_HOOK(__tsan_read##N, N, false)               \
  CARAFE_TSAN_HOOK(__tsan_write##N, N, true)               \
  CARAFE_TSAN_HOOK(__tsan_unaligned_read##N, N, false)     \
  CARAFE_TSAN_HOOK(__tsan_unaligned_write##N, N, true)     \
  CARAFE_TSAN_HOOK(__tsan_volatile_read##N, N, false)      \
  CARAFE_TSAN_HOOK(__tsan_volatile_write##N, N, true)
CARAFE_TSAN_ACCESS(1)
CARAFE_TSAN_ACCESS(2)
CARAFE_TSAN_ACCESS(4)
CARAFE_TSAN_ACCESS(8)
CARAFE_TSAN_ACCESS(16)
#undef CARAFE_TSAN_ACCESS
#undef CARAFE_TSAN_HOOK

CARAFE_TSAN void __tsan_read_range(void* a, unsigned long size) {
  on_access(uintptr_t(a), size, false, __builtin_return_address(0));
}
CARAFE_TSAN void __tsan_write_range(void* a, unsigned long size) {
  on_access(uintptr_t(a), size, true, __builtin_return_address(0));
}
CARAFE_TSAN void __tsan_init() {}
CARAFE_TSAN void __tsan_func_entry(void*) {}
CARAFE_TSAN void __tsan_func_exit() {}
CARAFE_TSAN void __tsan_vptr_update(void**, void*) {}
CARAFE_TSAN void __tsan_vptr_read(void**) {}
CARAFE_TSAN void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
CARAFE_TSAN void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

// Atomics: do the operation (sequentially consistent), record it as a load or a store.
#define CARAFE_TSAN_RMW(N, T, NAME, OP)                                                      \
  CARAFE_TSAN T __tsan_atomic##N##_##NAME(volatile T* a, T v, int) {                         \
    on_access(uintptr_t(a), sizeof(T), true, __builtin_return_address(0));                   \
    return OP((T*)a, v, __ATOMIC_SEQ_CST);                                                   \
  }
// A weak compare-exchange may fail spuriously; a strong one never does, and serves both.
#define CARAFE_TSAN_CAS(N, T, KIND)                                                          \
  CARAFE_TSAN int __tsan_atomic##N##_compare_exchange_##KIND(volatile T* a, T* c, T v, int,  \
                                                             int) {                          \
    on_access(uintptr_t(a), sizeof(T), true, __builtin_return_address(0));                  \
    return __atomic_compare_exchange_n((T*)a, c, v, false, __ATOMIC_SEQ_CST,                 \
                                       __ATOMIC_SEQ_CST);                                    \
  }
#define CARAFE_TSAN_ATOMICS(N, T)                                                            \
  CARAFE_TSAN T __tsan_atomic##N##_load(const volatile T* a, int) {                          \
    on_access(uintptr_t(a), sizeof(T), false, __builtin_return_address(0));                  \
    return __atomic_load_n((const T*)a, __ATOMIC_SEQ_CST);                                   \
  }                                                                                          \
  CARAFE_TSAN void __tsan_atomic##N##_store(volatile T* a, T v, int) {                       \
    on_access(uintptr_t(a), sizeof(T), true, __builtin_return_address(0));                   \
    __atomic_store_n((T*)a, v, __ATOMIC_SEQ_CST);                                            \
  }                                                                                          \
  CARAFE_TSAN_RMW(N, T, exchange, __atomic_exchange_n)                                       \
  CARAFE_TSAN_RMW(N, T, fetch_add, __atomic_fetch_add)                                       \
  CARAFE_TSAN_RMW(N, T, fetch_sub, __atomic_fetch_sub)                                       \
  CARAFE_TSAN_RMW(N, T, fetch_and, __atomic_fetch_and)                                       \
  CARAFE_TSAN_RMW(N, T, fetch_or, __atomic_fetch_or)                                         \
  CARAFE_TSAN_RMW(N, T, fetch_xor, __atomic_fetch_xor)                                       \
  CARAFE_TSAN_RMW(N, T, fetch_nand, __atomic_fetch_nand)                                     \
  CARAFE_TSAN_CAS(N, T, strong)                                                              \
  CARAFE_TSAN_CAS(N, T, weak)                                                                \
  CARAFE_TSAN T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int, int) { \
    on_access(uintptr_t(a), sizeof(T), true, __builtin_return_address(0));                  \
    __atomic_compare_exchange_n((T*)a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);    \
    return c;                                                                                \
  }
CARAFE_TSAN_ATOMICS(8, char)
CARAFE_TSAN_ATOMICS(16, short)
CARAFE_TSAN_ATOMICS(32, int)
CARAFE_TSAN_ATOMICS(64, long)
#undef CARAFE_TSAN_ATOMICS
#undef CARAFE_TSAN_RMW
#undef CARAFE_TSAN_CAS
