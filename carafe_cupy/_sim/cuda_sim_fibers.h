// cuda_sim_fibers.h -- the fibers behind cuda_sim_runtime.cpp: stacks, the
// context switch (hand-written on x86-64, ucontext elsewhere), launch state and
// resuming a thread. Included by cuda_sim_runtime.cpp only.
#pragma once

#include "cuda_sim.h"
#include "cuda_sim_observer.h"

#include <algorithm>
#include <csetjmp>
#include <cstdio>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#if defined(__x86_64__) && !defined(CARAFE_SIM_UCONTEXT)
#define CARAFE_SIM_ASM_SWITCH 1
#else
#define CARAFE_SIM_ASM_SWITCH 0
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define CARAFE_SIM_ASAN 1
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old,
                                     size_t* size_old);
void __asan_unpoison_memory_region(void const volatile* addr, size_t size);
}
#else
#define CARAFE_SIM_ASAN 0
#endif

extern "C" {
// Provided by the linker for the section that __shared__ variables live in.
extern char __start_carafe_sim_shared[] __attribute__((weak, visibility("hidden")));
extern char __stop_carafe_sim_shared[] __attribute__((weak, visibility("hidden")));
}

#if CARAFE_SIM_ASM_SWITCH
extern "C" CARAFE_SIM_HIDDEN void carafe_sim_switch(void** save_sp, void* load_sp);
extern "C" CARAFE_SIM_HIDDEN void carafe_sim_fiber_entry();
// save_sp/load_sp: push callee-saved registers, swap stacks, pop, return.
// A fresh fiber "returns" into carafe_sim_fiber_entry with r12 = Fiber*,
// r13 = function to call.
__asm__(R"(
  .pushsection .text
  .p2align 4
  .globl carafe_sim_switch
  .hidden carafe_sim_switch
  .type carafe_sim_switch,@function
carafe_sim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size carafe_sim_switch, .-carafe_sim_switch
  .p2align 4
  .globl carafe_sim_fiber_entry
  .hidden carafe_sim_fiber_entry
  .type carafe_sim_fiber_entry,@function
carafe_sim_fiber_entry:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size carafe_sim_fiber_entry, .-carafe_sim_fiber_entry
  .popsection
)");
#endif

CARAFE_SIM_HIDDEN uint3 threadIdx;
CARAFE_SIM_HIDDEN uint3 blockIdx;
CARAFE_SIM_HIDDEN dim3 blockDim;
CARAFE_SIM_HIDDEN dim3 gridDim;

namespace carafe_sim {

LaunchObserver* g_observer = nullptr;

enum State : int { RUNNABLE = 0, WAIT_BLOCK, WAIT_WARP, DONE, FAILED };

struct Fiber {
  void* sp = nullptr;
  char* stack_lo = nullptr;
  size_t stack_size = 0;
  uint3 tid{};
  unsigned linear = 0, lane = 0, warp = 0;
  int state = RUNNABLE;
  // Where the thread waits (barrier or warp primitive).
  const char* file = "";
  unsigned line = 0;
  const char* what = "";
  int bkind = 0, pred = 0, bresult = 0;
  // Warp mailbox.
  unsigned mask = 0;
  int op = 0, param = 0, width = 32;
  uint64_t value = 0, result = 0;
#if CARAFE_SIM_ASAN
  void* fake_stack = nullptr;
#endif
#if !CARAFE_SIM_ASM_SWITCH
  ucontext_t ctx;
#endif
};

// ------------------------------------------------------------ launch state
static const KernelEntry* g_entry = nullptr;
static void** g_args = nullptr;
static Fiber* g_cur = nullptr;
static void* g_sched_sp = nullptr;
#if !CARAFE_SIM_ASM_SWITCH
static ucontext_t g_sched_ctx;
#endif
#if CARAFE_SIM_ASAN
static const void* g_sched_bottom = nullptr;
static size_t g_sched_size = 0;
#endif
static std::vector<Fiber> g_fibers;
static unsigned g_nthreads = 0;
static char* g_dyn_shared = nullptr;
static size_t g_dyn_size = 0;
static std::string g_error;
static bool g_fast_path = false;
static std::jmp_buf g_fast_jmp;

// Fiber stacks: one mapping, each slot = guard page + stack, kept between
// launches and grown when a bigger block arrives.
static char* g_pool = nullptr;
static size_t g_pool_bytes = 0, g_pool_slots = 0, g_slot_bytes = 0, g_page = 0;

static bool ensure_pool(unsigned n, size_t stack_size, std::string& err) {
  if (g_page == 0) g_page = size_t(sysconf(_SC_PAGESIZE));
  size_t stack = (stack_size + g_page - 1) / g_page * g_page;
  size_t slot = stack + g_page;
  if (g_pool && g_pool_slots >= n && g_slot_bytes == slot) return true;
  if (g_pool) munmap(g_pool, g_pool_bytes);
  g_pool = nullptr;
  size_t bytes = slot * n;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    err = "cannot map " + std::to_string(bytes) + " bytes of fiber stacks";
    return false;
  }
  g_pool = static_cast<char*>(p);
  for (unsigned i = 0; i < n; ++i) mprotect(g_pool + i * slot, g_page, PROT_NONE);
  g_pool_bytes = bytes;
  g_pool_slots = n;
  g_slot_bytes = slot;
  return true;
}

static inline void run_thread_body() { g_entry->thunk(g_entry->fn, g_args); }

static void switch_to_sched(Fiber* f, bool final);

static void fiber_main(Fiber* f) {
#if CARAFE_SIM_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_sched_bottom, &g_sched_size);
#endif
  run_thread_body();
  f->state = DONE;
  switch_to_sched(f, true);
  __builtin_unreachable();
}

#if !CARAFE_SIM_ASM_SWITCH
static void fiber_main_uc(unsigned hi, unsigned lo) {
  fiber_main(reinterpret_cast<Fiber*>((uintptr_t(hi) << 32) | uintptr_t(lo)));
}
#endif

static void init_fiber(Fiber* f, char* stack_lo, size_t size) {
  f->stack_lo = stack_lo;
  f->stack_size = size;
  f->state = RUNNABLE;
#if CARAFE_SIM_ASAN
  // A fiber abandoned by an earlier error may have left poisoned frames.
  __asan_unpoison_memory_region(stack_lo, size);
  f->fake_stack = nullptr;
#endif
#if CARAFE_SIM_ASM_SWITCH
  uintptr_t top = (uintptr_t(stack_lo) + size) & ~uintptr_t(15);
  // After the 6 pops and the ret below, rsp is 16-byte aligned, as a call
  // instruction expects.
  void** sp = reinterpret_cast<void**>(top - 72);
  sp[0] = nullptr;                                             // r15
  sp[1] = nullptr;                                             // r14
  sp[2] = reinterpret_cast<void*>(&fiber_main);                // r13
  sp[3] = f;                                                   // r12
  sp[4] = nullptr;                                             // rbx
  sp[5] = nullptr;                                             // rbp
  sp[6] = reinterpret_cast<void*>(&carafe_sim_fiber_entry);    // return address
  sp[7] = nullptr;
  f->sp = sp;
#else
  getcontext(&f->ctx);
  f->ctx.uc_stack.ss_sp = stack_lo;
  f->ctx.uc_stack.ss_size = size;
  f->ctx.uc_link = nullptr;
  uintptr_t p = reinterpret_cast<uintptr_t>(f);
  makecontext(&f->ctx, reinterpret_cast<void (*)()>(&fiber_main_uc), 2, unsigned(p >> 32),
              unsigned(p & 0xffffffffu));
#endif
}

static void resume(Fiber* f) {
  g_cur = f;
  threadIdx = f->tid;
#if CARAFE_SIM_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f->stack_lo, f->stack_size);
#endif
#if CARAFE_SIM_ASM_SWITCH
  carafe_sim_switch(&g_sched_sp, f->sp);
#else
  swapcontext(&g_sched_ctx, &f->ctx);
#endif
#if CARAFE_SIM_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  g_cur = nullptr;
}

static void switch_to_sched(Fiber* f, bool final) {
#if CARAFE_SIM_ASAN
  __sanitizer_start_switch_fiber(final ? nullptr : &f->fake_stack, g_sched_bottom,
                                 g_sched_size);
#else
  (void)final;
#endif
#if CARAFE_SIM_ASM_SWITCH
  carafe_sim_switch(&f->sp, g_sched_sp);
#else
  swapcontext(&f->ctx, &g_sched_ctx);
#endif
#if CARAFE_SIM_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, &g_sched_bottom, &g_sched_size);
#endif
  // Threads resumed after a barrier must re-read memory written by others.
  __asm__ __volatile__("" ::: "memory");
}

}  // namespace carafe_sim
