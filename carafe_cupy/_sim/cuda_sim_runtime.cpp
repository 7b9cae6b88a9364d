// cuda_sim_runtime.cpp -- fiber scheduler behind cuda_sim.h.
//
// build.py compiles this file once per (compiler, flags) into an object file
// and links it into every kernel module. Everything here is hidden, so every
// module owns a private copy (modules never share scheduler state).
//
// Threads of a block are fibers on the calling OS thread. On x86-64 a small
// hand-written switch saves callee-saved registers + rsp (~25 ns); elsewhere
// ucontext is used (portable, but it makes a signal-mask syscall per switch).
// A kernel module that contains no synchronisation primitive runs every thread
// straight to completion on the OS stack.

#include "cuda_sim_fibers.h"
#include "cuda_sim_orders.h"

namespace carafe_sim {

static std::string where(const char* file, unsigned line) {
  return std::string(file) + ":" + std::to_string(line);
}
static std::string tid_str(const uint3& t) {
  return "(" + std::to_string(t.x) + "," + std::to_string(t.y) + "," + std::to_string(t.z) + ")";
}

// Called from device code when no fiber exists (module classified as
// barrier-free): bail out of the launch.
[[noreturn]] static void fast_path_violation(const char* what) {
  g_error = std::string("internal simulator error: ") + what +
            " reached in a module compiled without barrier support";
  std::longjmp(g_fast_jmp, 1);
}

static void fail_current(std::string msg) {
  Fiber* f = g_cur;
  if (g_error.empty()) g_error = std::move(msg);
  f->state = FAILED;
  switch_to_sched(f, false);
  __builtin_unreachable();
}

// -DCARAFE_SIM_WEAK_BARRIERS (in CARAFE_CUPY_SIM_CXXFLAGS), to check that tests
// notice weakened barriers: =1 makes __syncthreads wait for the thread's warp
// only, =2 makes __syncthreads and __syncwarp return at once.
int block_barrier(int kind, int pred, const std::source_location& loc) {
  Fiber* f = g_cur;
  if (!f) fast_path_violation("__syncthreads");
#ifdef CARAFE_SIM_WEAK_BARRIERS
  if (kind == BAR_PLAIN && CARAFE_SIM_WEAK_BARRIERS == 2) return 0;
  if (kind == BAR_PLAIN) return int(warp_op(~0u, OP_SYNC, 0, 0, 32, "__syncthreads", loc));
#endif
  f->state = WAIT_BLOCK;
  f->bkind = kind;
  f->pred = pred;
  f->file = loc.file_name();
  f->line = loc.line();
  f->what = "__syncthreads";
  switch_to_sched(f, false);
  return f->bresult;
}

uint64_t warp_op(unsigned mask, int op, uint64_t value, int param, int width, const char* name,
                 const std::source_location& loc) {
  Fiber* f = g_cur;
  if (!f) fast_path_violation(name);
#ifdef CARAFE_SIM_WEAK_BARRIERS
  if (op == OP_SYNC && CARAFE_SIM_WEAK_BARRIERS == 2) return 0;
#endif
  if (!(mask & (1u << f->lane))) {
    fail_current(std::string(name) + " at " + where(loc.file_name(), loc.line()) +
                 ": thread " + tid_str(f->tid) + " (lane " + std::to_string(f->lane) +
                 ") is not in the member mask 0x" + [&] {
                   char b[16];
                   std::snprintf(b, sizeof b, "%08x", mask);
                   return std::string(b);
                 }());
  }
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
    fail_current(std::string(name) + " at " + where(loc.file_name(), loc.line()) +
                 ": width " + std::to_string(width) + " is not a power of two <= 32");
  }
  f->state = WAIT_WARP;
  f->mask = mask;
  f->op = op;
  f->value = value;
  f->param = param;
  f->width = width;
  f->file = loc.file_name();
  f->line = loc.line();
  f->what = name;
  switch_to_sched(f, false);
  return f->result;
}

void* dynamic_shared_ptr() { return g_dyn_shared; }

unsigned lane_id() { return g_cur ? g_cur->lane : (threadIdx.x % 32u); }

unsigned active_mask() {
  Fiber* f = g_cur;
  if (!f) return 0xffffffffu;
  unsigned m = 0;
  unsigned base = f->warp * 32;
  for (unsigned l = 0; l < 32 && base + l < g_nthreads; ++l) {
    int s = g_fibers[base + l].state;
    if (s != DONE && s != FAILED) m |= 1u << l;
  }
  return m;
}

// -------------------------------------------------------------- scheduler
static std::string state_summary() {
  // "N thread(s) at WHAT (file:line)" for every distinct waiting site.
  std::vector<std::pair<std::string, unsigned>> sites;
  unsigned done = 0;
  for (unsigned i = 0; i < g_nthreads; ++i) {
    const Fiber& f = g_fibers[i];
    if (f.state == DONE) {
      ++done;
      continue;
    }
    std::string k = std::string(f.what) + " (" + where(f.file, f.line) + ")";
    if (f.state == WAIT_WARP) {
      char b[16];
      std::snprintf(b, sizeof b, "%08x", f.mask);
      k += " [warp " + std::to_string(f.warp) + ", mask 0x" + b + "]";
    }
    bool found = false;
    for (auto& s : sites)
      if (s.first == k) {
        ++s.second;
        found = true;
      }
    if (!found) sites.emplace_back(k, 1u);
  }
  std::string out;
  for (auto& s : sites) out += "\n  " + std::to_string(s.second) + " thread(s) waiting at " + s.first;
  if (done) out += "\n  " + std::to_string(done) + " thread(s) exited";
  return out;
}

// Completes every group of warp w whose members all wait; returns how many
// threads were released, or -1 on error.
static int release_warp(unsigned w) {
  int released = 0;
  unsigned base = w * 32;
  unsigned nl = std::min(32u, g_nthreads - base);
  unsigned exist = nl == 32 ? 0xffffffffu : ((1u << nl) - 1u);
  for (unsigned l = 0; l < nl; ++l) {
    Fiber& lead = g_fibers[base + l];
    if (lead.state != WAIT_WARP) continue;
    unsigned members = lead.mask & exist;
    bool ready = true;
    for (unsigned m = 0; m < nl; ++m) {
      if (!(members & (1u << m))) continue;
      const Fiber& o = g_fibers[base + m];
      if (o.state == DONE) {
        g_error = std::string(lead.what) + " at " + where(lead.file, lead.line) +
                  ": thread " + tid_str(o.tid) + " (lane " + std::to_string(m) +
                  ") named in the member mask has exited (warp " + std::to_string(w) +
                  ")";
        return -1;
      }
      if (o.state != WAIT_WARP || o.mask != lead.mask) ready = false;
    }
    if (!ready) continue;
    uint64_t ballot = 0;
    unsigned count = 0;
    for (unsigned m = 0; m < nl; ++m)
      if (members & (1u << m)) {
        ++count;
        if (g_fibers[base + m].value) ballot |= 1ull << m;
      }
    for (unsigned m = 0; m < nl; ++m) {
      if (!(members & (1u << m))) continue;
      Fiber& t = g_fibers[base + m];
      int wdt = t.width;
      int seg = int(m) & ~(wdt - 1);
      int src = int(m);
      switch (t.op) {
        case OP_IDX: src = seg + (t.param & (wdt - 1)); break;
        case OP_UP: src = (int(m) - seg) >= t.param ? int(m) - t.param : int(m); break;
        case OP_DOWN: src = (int(m) - seg) + t.param < wdt ? int(m) + t.param : int(m); break;
        case OP_XOR: {
          int s = int(m) ^ t.param;
          src = (s >= seg && s < seg + wdt) ? s : int(m);
          break;
        }
        default: break;
      }
      switch (t.op) {
        case OP_SYNC: t.result = 0; break;
        case OP_BALLOT: t.result = ballot; break;
        case OP_ANY: t.result = ballot != 0; break;
        case OP_ALL: t.result = unsigned(__builtin_popcountll(ballot)) == count; break;
        default:
          // Reading a lane outside the mask is undefined on hardware; give
          // back the caller's own value.
          t.result = (src >= 0 && src < int(nl) && (members & (1u << src)))
                         ? g_fibers[base + unsigned(src)].value
                         : t.value;
      }
    }
    for (unsigned m = 0; m < nl; ++m)
      if (members & (1u << m)) {
        g_fibers[base + m].state = RUNNABLE;
        ++released;
      }
  }
  return released;
}

static int release_warps() {
  int released = 0;
  for (unsigned w = 0; w < (g_nthreads + 31) / 32; ++w) {
    int r = release_warp(w);
    if (r < 0) return -1;
    released += r;
  }
  return released;
}

// Returns 0 when released, -1 on error (g_error set), 1 if not applicable.
static int release_block_barrier() {
  unsigned waiting = 0, done = 0, first = ~0u;
  for (unsigned i = 0; i < g_nthreads; ++i) {
    int s = g_fibers[i].state;
    if (s == WAIT_BLOCK) {
      ++waiting;
      if (first == ~0u) first = i;
    } else if (s == DONE) {
      ++done;
    }
  }
  if (waiting == 0 || waiting + done != g_nthreads) return 1;
  const Fiber& a = g_fibers[first];
  if (done) {
    g_error = "barrier error: " + std::to_string(done) + " thread(s) exited while " +
              std::to_string(waiting) + " thread(s) wait at __syncthreads (" +
              where(a.file, a.line) + "), e.g. thread " + tid_str(a.tid) +
              " waits; is the barrier inside divergent control flow or after an early return?";
    return -1;
  }
  for (unsigned i = first + 1; i < g_nthreads; ++i) {
    const Fiber& b = g_fibers[i];
    if (b.line != a.line || std::strcmp(b.file, a.file) != 0) {
      g_error = "barrier error: threads wait at different __syncthreads call sites: " +
                where(a.file, a.line) + " (thread " + tid_str(a.tid) + ") and " +
                where(b.file, b.line) + " (thread " + tid_str(b.tid) + ")";
      return -1;
    }
  }
  int count = 0;
  for (unsigned i = 0; i < g_nthreads; ++i) count += g_fibers[i].pred;
  for (unsigned i = 0; i < g_nthreads; ++i) {
    Fiber& f = g_fibers[i];
    switch (f.bkind) {
      case BAR_COUNT: f.bresult = count; break;
      case BAR_AND: f.bresult = count == int(g_nthreads); break;
      case BAR_OR: f.bresult = count != 0; break;
      default: f.bresult = 0;
    }
    f.state = RUNNABLE;
  }
  return 0;
}

static void poison_shared() {
  if (__start_carafe_sim_shared && __stop_carafe_sim_shared)
    std::memset(__start_carafe_sim_shared, 0xff,
                size_t(__stop_carafe_sim_shared - __start_carafe_sim_shared));
  if (g_dyn_size) std::memset(g_dyn_shared, 0xff, g_dyn_size);
}

// Runs warp w (lanes in order, meeting at warp primitives) until every lane
// waits at a block barrier, has exited, or waits at a warp primitive that
// cannot complete. Returns 0, or -1 on error.
static int run_warp(unsigned w) {
  const unsigned base = w * 32, end = std::min(g_nthreads, base + 32);
  for (;;) {
    for (unsigned i = base; i < end; ++i) {
      if (g_fibers[i].state != RUNNABLE) continue;
      resume(&g_fibers[i]);
      if (!g_error.empty()) return -1;
    }
    int r = release_warp(w);
    if (r <= 0) return r;
  }
}

static int run_block(int order, Rng& rng, size_t stack_size) {
  poison_shared();
  std::vector<unsigned> perm(g_nthreads), warps((g_nthreads + 31) / 32);
  if (g_fast_path) {
    unsigned n = 0;
    warp_order(order, rng, warps);  // warp orders: whole warps, lanes in order
    for (unsigned w : warps)
      for (unsigned i = w * 32; i < std::min(g_nthreads, w * 32 + 32); ++i) perm[n++] = i;
    round_order(order, rng, perm.data(), n);
    if (setjmp(g_fast_jmp)) return -1;
    for (unsigned i : perm) {
      threadIdx = g_fibers[i].tid;
      run_thread_body();
    }
    return 0;
  }
  for (unsigned i = 0; i < g_nthreads; ++i)
    init_fiber(&g_fibers[i], g_pool + size_t(i) * g_slot_bytes + g_page,
               g_slot_bytes - g_page);
  (void)stack_size;
  for (;;) {
    if (warp_granular(order)) {
      warp_order(order, rng, warps);
      for (unsigned w : warps)
        if (run_warp(w) < 0) return -1;
    } else {
      unsigned n = 0;
      for (unsigned i = 0; i < g_nthreads; ++i)
        if (g_fibers[i].state == RUNNABLE) perm[n++] = i;
      round_order(order, rng, perm.data(), n);
      for (unsigned k = 0; k < n; ++k) {
        resume(&g_fibers[perm[k]]);
        if (!g_error.empty()) return -1;
      }
    }
    unsigned done = 0;
    for (unsigned i = 0; i < g_nthreads; ++i) done += g_fibers[i].state == DONE;
    if (done == g_nthreads) return 0;
    int r = release_warps();
    if (r < 0) return -1;
    if (r > 0) continue;
    r = release_block_barrier();
    if (r < 0) return -1;
    if (r == 0) {
      if (g_observer) g_observer->converged();
      continue;
    }
    g_error = "deadlock: no thread can make progress" + state_summary();
    return -1;
  }
}

}  // namespace carafe_sim

namespace carafe_sim {
int launch(const KernelEntry* e, const char* kernel, const unsigned* grid,
                  const unsigned* block, unsigned long long shared_bytes, void** args,
                  int order, unsigned long long seed, unsigned long long stack_size, char* err,
                  unsigned long long err_len, bool may_block) {
  // Shared memory and the scheduler are per module: one launch at a time.
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  auto report = [&](const std::string& msg) {
    std::snprintf(err, size_t(err_len), "%s", msg.c_str());
    return 1;
  };
  if (!e) return report(std::string("kernel '") + kernel + "' not found in module");
  unsigned long long nthreads = 1ull * block[0] * block[1] * block[2];
  if (nthreads == 0 || nthreads > 1024)
    return report("invalid block size: " + std::to_string(nthreads) + " threads (1..1024)");
  if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0) return report("invalid grid: zero extent");
  g_error.clear();
  g_entry = e;
  g_args = args;
  g_nthreads = unsigned(nthreads);
  g_fast_path = !may_block;
  std::vector<char> dyn;
  // 256-byte alignment like the start of CUDA shared memory.
  dyn.resize(size_t(shared_bytes) + 256);
  g_dyn_size = size_t(shared_bytes);
  g_dyn_shared = reinterpret_cast<char*>((uintptr_t(dyn.data()) + 255) & ~uintptr_t(255));
  if (!g_fast_path) {
    std::string perr;
    if (!ensure_pool(g_nthreads, size_t(stack_size), perr)) return report(perr);
  }
  g_fibers.assign(g_nthreads, Fiber{});
  blockDim = dim3(block[0], block[1], block[2]);
  gridDim = dim3(grid[0], grid[1], grid[2]);
  for (unsigned z = 0, i = 0; z < block[2]; ++z)
    for (unsigned y = 0; y < block[1]; ++y)
      for (unsigned x = 0; x < block[0]; ++x, ++i) {
        Fiber& f = g_fibers[i];
        f.tid = uint3{x, y, z};
        f.linear = i;
        f.lane = i % 32;
        f.warp = i / 32;
      }
  Rng rng{seed};
  if (g_observer)
    g_observer->launch_begin(e, args, grid, block, g_dyn_shared, g_dyn_size,
                             g_fast_path ? nullptr : g_pool, g_fast_path ? 0 : g_pool_bytes);
  unsigned long long linear_block = 0;
  for (unsigned bz = 0; bz < grid[2]; ++bz)
    for (unsigned by = 0; by < grid[1]; ++by)
      for (unsigned bx = 0; bx < grid[0]; ++bx, ++linear_block) {
        blockIdx = uint3{bx, by, bz};
        if (g_observer && !g_observer->block_begin(linear_block)) continue;
        if (run_block(order, rng, size_t(stack_size)) != 0) {
          std::string msg = std::string("kernel '") + kernel + "', block " +
                            tid_str(blockIdx) + ": " + g_error;
          g_error.clear();
          g_dyn_shared = nullptr;
          g_dyn_size = 0;
          return report(msg);
        }
        if (g_observer) g_observer->converged();
      }
  g_dyn_shared = nullptr;
  g_dyn_size = 0;
  return 0;
}
}  // namespace carafe_sim
