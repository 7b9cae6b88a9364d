// cuda_sim_trace.cpp -- memory-access tracer linked into traced modules.
//
// A traced module's kernel code is compiled with GCC's -fsanitize=thread
// instrumentation, which puts a call to __tsan_readN / __tsan_writeN (N bytes)
// in front of every memory access. This file provides those hooks
// (cuda_sim_trace_hooks.h; libtsan is never linked): each access is classified
// as shared (__shared__ statics, the launch's dynamic buffer), ignored (stacks,
// the module's own code, constants and built-in variables, the kernel argument
// buffers) or global (everything else, i.e. the launch's tensors). The return
// address of the hook names the access site.
//
// A warp-level request is the n-th execution of one site by the lanes of one
// warp (linear thread id / 32), counted from the last point where the whole
// block converged (a released __syncthreads, or the block's start). Requests
// are formed and measured whenever the block converges (cuda_sim_observer.h):
//   global: 32-byte sectors touched by the request's lanes, counted from the
//           start of the tensor they lie in (device allocations are aligned);
//   shared: wavefronts, with 32 banks of 4 bytes. Accesses of up to 4 bytes
//           are served for the whole warp at once, 8-byte accesses per half
//           warp (lanes 0-15, 16-31) and 16-byte ones per quarter warp; a
//           phase needs as many wavefronts as the most distinct 4-byte words
//           any one bank holds (lanes reading the same word share it). Bank
//           conflicts are the wavefronts beyond one per non-empty phase.
// Unique bytes are the distinct global bytes read (loads) or written (stores)
// in the launch. Atomic read-modify-writes count as stores.
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>

#include <algorithm>
#include <iterator>
#include <tuple>
#include <vector>

#include "cuda_sim_observer.h"
#include "cuda_sim_trace_measure.h"

extern "C" {
extern char __start_carafe_sim_shared[] __attribute__((weak, visibility("hidden")));
extern char __stop_carafe_sim_shared[] __attribute__((weak, visibility("hidden")));
}

namespace carafe_sim {
namespace {

using trace_measure::ByteSet;
using trace_measure::count_sectors;
using trace_measure::count_wavefronts;
using trace_measure::Lane;

struct Range {
  uintptr_t lo = 0, hi = 0;
  bool contains(uintptr_t a) const { return a - lo < hi - lo; }
};

enum Category : uint8_t { GLOBAL_LOAD = 0, GLOBAL_STORE, SHARED_LOAD, SHARED_STORE, CATEGORIES };

struct Totals {
  uint64_t requests = 0, bytes = 0, sectors = 0, conflicts = 0, accesses = 0;
};

struct Site {
  uintptr_t pc = 0;
  Totals cat[CATEGORIES];
  unsigned size[CATEGORIES] = {};
  ByteSet unique[2];  // global loads, global stores
};

// One lane's access; size 0 marks a lane that made none.
struct Access {
  uintptr_t addr;
  uint32_t size;
  uint32_t cat;
};

constexpr size_t kMaxPending = size_t(1) << 26;  // 1 GB between two convergence points
constexpr unsigned kWarps = 32;                  // 1024 threads at most

// ------------------------------------------------------------- trace state
bool g_on = false;          // recording the current block
bool g_run_skipped = true;  // run blocks outside the sample (untraced)
std::vector<unsigned long long> g_sample;  // sorted linear block ids; empty = all
// g_image: the module's mapped image; g_statics: its writable data past RELRO.
Range g_shared_static, g_shared_dyn, g_image, g_statics, g_pool, g_os_stack;
std::vector<Range> g_arg_ranges;  // sorted
std::vector<uintptr_t> g_bases;   // pointer arguments, sorted: the launch's tensors
std::vector<Site> g_sites;
std::vector<uintptr_t> g_site_keys;  // open addressing: pc -> g_site_vals
std::vector<uint32_t> g_site_vals;
unsigned g_threads = 0;
// Since the block last converged: how often each thread ran each site
// ([site * g_threads + thread]) and what each warp accessed there
// ([site * kWarps + warp], slot occurrence * 32 + lane).
std::vector<uint32_t> g_occurrence;
std::vector<std::vector<Access>> g_pending;
std::vector<uint32_t> g_touched;  // indices of non-empty g_pending entries
size_t g_pending_count = 0;
Totals g_totals[CATEGORIES];
ByteSet g_unique[2];
uint64_t g_blocks_traced = 0;
bool g_overflow = false;

bool builtin_variable(uintptr_t a) {
  auto in = [a](const void* v, size_t n) { return a - uintptr_t(v) < n; };
  return in(&threadIdx, sizeof threadIdx) || in(&blockIdx, sizeof blockIdx) ||
         in(&blockDim, sizeof blockDim) || in(&gridDim, sizeof gridDim);
}

// __shared__ statics of function templates are comdat objects, which GCC will
// not put in the carafe_sim_shared section: any writable static of the
// module's own image other than the built-in variables is shared memory.
bool shared_static(uintptr_t a) {
  return g_shared_static.contains(a) || (g_statics.contains(a) && !builtin_variable(a));
}

bool excluded(uintptr_t a) {
  if (g_image.contains(a) || g_pool.contains(a) || g_os_stack.contains(a)) return true;
  auto it = std::upper_bound(g_arg_ranges.begin(), g_arg_ranges.end(), a,
                             [](uintptr_t v, const Range& r) { return v < r.lo; });
  return it != g_arg_ranges.begin() && std::prev(it)->contains(a);
}

size_t site_slot(uintptr_t pc, size_t mask) { return (pc * 0x9E3779B97F4A7C15ull) >> 24 & mask; }

uint32_t site_index(uintptr_t pc) {
  size_t mask = g_site_keys.size() - 1;
  for (size_t i = site_slot(pc, mask);; i = (i + 1) & mask) {
    if (g_site_keys[i] == pc) return g_site_vals[i];
    if (g_site_keys[i] != 0) continue;
    uint32_t index = uint32_t(g_sites.size());
    if (2 * (index + 1) > g_site_keys.size()) {
      std::vector<uintptr_t> keys(g_site_keys.size() * 2, 0);
      std::vector<uint32_t> vals(keys.size(), 0);
      g_site_keys.swap(keys);
      g_site_vals.swap(vals);
      mask = g_site_keys.size() - 1;
      for (size_t j = 0; j < keys.size(); ++j) {
        if (!keys[j]) continue;
        size_t k = site_slot(keys[j], mask);
        while (g_site_keys[k]) k = (k + 1) & mask;
        g_site_keys[k] = keys[j];
        g_site_vals[k] = vals[j];
      }
      return site_index(pc);
    }
    g_site_keys[i] = pc;
    g_site_vals[i] = index;
    g_sites.emplace_back();
    g_sites.back().pc = pc;
    g_occurrence.resize(g_sites.size() * g_threads, 0);
    g_pending.resize(g_sites.size() * kWarps);
    return index;
  }
}

inline void on_access(uintptr_t addr, size_t size, bool write, void* ret) {
  if (!g_on || size == 0) return;
  uint32_t cat;
  if (g_shared_dyn.contains(addr) || shared_static(addr)) {
    cat = write ? SHARED_STORE : SHARED_LOAD;
  } else if (excluded(addr)) {
    return;
  } else {
    cat = write ? GLOBAL_STORE : GLOBAL_LOAD;
  }
  if (++g_pending_count > kMaxPending) {
    g_overflow = true;
    return;
  }
  unsigned thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  // The return address points after the call; one byte back lies inside it.
  uint32_t site = site_index(reinterpret_cast<uintptr_t>(ret) - 1);
  uint32_t occurrence = g_occurrence[size_t(site) * g_threads + thread]++;
  size_t index = size_t(site) * kWarps + (thread >> 5);
  std::vector<Access>& slots = g_pending[index];
  if (slots.empty()) g_touched.push_back(uint32_t(index));
  size_t at = size_t(occurrence) * 32 + (thread & 31);
  if (at >= slots.size()) slots.resize(std::max<size_t>(at / 32 * 32 + 32, 2 * slots.size()));
  slots[at] = Access{addr, uint32_t(std::min<size_t>(size, UINT32_MAX)), cat};
}

// ------------------------------------------------------- request measures
void add(Totals& t, uint64_t bytes, uint64_t sectors, uint64_t conflicts, uint64_t accesses) {
  t.requests += 1;
  t.bytes += bytes;
  t.sectors += sectors;
  t.conflicts += conflicts;
  t.accesses += accesses;
}

void measure(uint32_t site_id, uint32_t cat, const Lane* r, size_t n,
             std::vector<uintptr_t>& scratch) {
  uint64_t bytes = 0, sectors, conflicts = 0;
  unsigned widest = 0;
  for (size_t k = 0; k < n; ++k) {
    bytes += r[k].size;
    widest = std::max(widest, r[k].size);
  }
  if (cat == GLOBAL_LOAD || cat == GLOBAL_STORE) {
    sectors = count_sectors(r, n, g_bases, scratch);
    for (size_t k = 0; k < n; ++k) {
      g_unique[cat].add(r[k].addr, r[k].size);
      g_sites[site_id].unique[cat].add(r[k].addr, r[k].size);
    }
  } else {
    auto [wavefronts, phases] = count_wavefronts(r, n, scratch);
    sectors = wavefronts;
    conflicts = wavefronts - phases;
  }
  Site& site = g_sites[site_id];
  add(g_totals[cat], bytes, sectors, conflicts, n);
  add(site.cat[cat], bytes, sectors, conflicts, n);
  site.size[cat] = std::max(site.size[cat], widest);
}

// Turns everything pending into requests: one per warp, site, occurrence and
// memory space / direction (a site normally has one).
void flush() {
  std::vector<uintptr_t> scratch;
  Lane lanes[CATEGORIES][32];
  size_t counts[CATEGORIES];
  for (uint32_t index : g_touched) {
    const uint32_t site = index / kWarps, warp = index % kWarps;
    std::vector<Access>& slots = g_pending[index];
    for (size_t base = 0; base < slots.size(); base += 32) {
      std::fill(std::begin(counts), std::end(counts), 0);
      for (uint32_t lane = 0; lane < 32; ++lane) {
        const Access& a = slots[base + lane];
        if (a.size) lanes[a.cat][counts[a.cat]++] = Lane{a.addr, a.size, lane};
      }
      for (uint32_t cat = 0; cat < CATEGORIES; ++cat)
        if (counts[cat]) measure(site, cat, lanes[cat], counts[cat], scratch);
    }
    slots.clear();
    for (unsigned t = warp * 32; t < std::min(g_threads, warp * 32 + 32); ++t)
      g_occurrence[size_t(site) * g_threads + t] = 0;
  }
  g_touched.clear();
  g_pending_count = 0;
}

// The module's own mapped image, and its writable data after RELRO.
std::pair<Range, Range> module_image() {
  Dl_info info{};
  if (!dladdr(reinterpret_cast<void*>(&module_image), &info) || !info.dli_fbase) return {};
  struct Search {
    uintptr_t base;
    Range image, data;
  } search{reinterpret_cast<uintptr_t>(info.dli_fbase), {}, {}};
  dl_iterate_phdr(
      [](dl_phdr_info* p, size_t, void* out) {
        auto* s = static_cast<Search*>(out);
        if (p->dlpi_addr != s->base) return 0;
        uintptr_t lo = UINTPTR_MAX, hi = 0, relro_end = 0;
        for (int k = 0; k < p->dlpi_phnum; ++k) {
          const auto& h = p->dlpi_phdr[k];
          const uintptr_t start = p->dlpi_addr + h.p_vaddr, end = start + h.p_memsz;
          if (h.p_type == PT_GNU_RELRO) relro_end = end;
          if (h.p_type != PT_LOAD) continue;
          lo = std::min(lo, start);
          hi = std::max(hi, end);
          if (h.p_flags & PF_W) s->data = Range{start, end};
        }
        s->image = Range{lo, hi};
        if (relro_end > s->data.lo && relro_end <= s->data.hi) s->data.lo = relro_end;
        return 1;
      },
      &search);
  return {search.image, search.data};
}

Range current_thread_stack() {
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) != 0) return {};
  void* lo = nullptr;
  size_t size = 0;
  pthread_attr_getstack(&attr, &lo, &size);
  pthread_attr_destroy(&attr);
  return Range{reinterpret_cast<uintptr_t>(lo), reinterpret_cast<uintptr_t>(lo) + size};
}

struct Tracer final : LaunchObserver {
  void launch_begin(const KernelEntry* entry, void** args, const unsigned*,
                    const unsigned* block, char* dyn_shared, size_t dyn_bytes,
                    const char* stacks, size_t stack_bytes) override {
    g_threads = block[0] * block[1] * block[2];
    g_occurrence.assign(g_sites.size() * g_threads, 0);
    g_shared_dyn = Range{uintptr_t(dyn_shared), uintptr_t(dyn_shared) + dyn_bytes};
    g_shared_static = Range{uintptr_t(__start_carafe_sim_shared),
                            uintptr_t(__stop_carafe_sim_shared)};
    g_pool = Range{uintptr_t(stacks), uintptr_t(stacks) + stack_bytes};
    g_os_stack = current_thread_stack();
    std::tie(g_image, g_statics) = module_image();
    g_bases.clear();
    for (int i = 0; i < entry->nparams; ++i)
      if (entry->pointers[i]) g_bases.push_back(arg_cast<uintptr_t>(args[i]));
    std::sort(g_bases.begin(), g_bases.end());
    g_arg_ranges.clear();
    g_arg_ranges.push_back(Range{uintptr_t(args), uintptr_t(args + std::max(entry->nparams, 1))});
    for (int i = 0; i < entry->nparams; ++i)
      g_arg_ranges.push_back(Range{uintptr_t(args[i]), uintptr_t(args[i]) + entry->sizes[i]});
    std::sort(g_arg_ranges.begin(), g_arg_ranges.end(),
              [](const Range& a, const Range& b) { return a.lo < b.lo; });
  }
  bool block_begin(unsigned long long linear) override {
    g_on = g_sample.empty() || std::binary_search(g_sample.begin(), g_sample.end(), linear);
    g_blocks_traced += g_on;
    return g_on || g_run_skipped;
  }
  void converged() override { flush(); }
};

Tracer g_tracer;

void reset() {
  g_sites.clear();
  g_site_keys.assign(1024, 0);
  g_site_vals.assign(1024, 0);
  g_occurrence.clear();
  g_pending.clear();
  g_touched.clear();
  g_pending_count = 0;
  for (auto& t : g_totals) t = Totals{};
  for (auto& u : g_unique) u.clear();
  g_blocks_traced = 0;
  g_overflow = false;
  g_on = false;
}

}  // namespace
}  // namespace carafe_sim

// ---------------------------------------------------------- control (Python)
using namespace carafe_sim;

#define CARAFE_TRACE_API extern "C" __attribute__((visibility("default")))

// Next launch traces the listed linear blocks (sorted; n == 0: every block);
// run_skipped != 0 still runs the others, untraced.
CARAFE_TRACE_API int carafe_sim_trace_arm(const unsigned long long* sample, unsigned long long n,
                                          int run_skipped) {
  reset();
  g_sample.assign(sample, sample + n);
  g_run_skipped = run_skipped != 0;
  g_observer = &g_tracer;
  return 0;
}

// 4 categories x {requests, bytes, sectors, unique bytes, conflicts, accesses},
// then blocks traced and an overflow flag: 26 values.
CARAFE_TRACE_API int carafe_sim_trace_totals(unsigned long long* out, int n) {
  if (n < 26) return -1;
  for (int c = 0; c < CATEGORIES; ++c) {
    const Totals& t = g_totals[c];
    unsigned long long* row = out + 6 * c;
    row[0] = t.requests;
    row[1] = t.bytes;
    row[2] = t.sectors;
    row[3] = c < 2 ? g_unique[c].count() : 0;
    row[4] = t.conflicts;
    row[5] = t.accesses;
  }
  out[24] = g_blocks_traced;
  out[25] = g_overflow;
  return 26;
}

// Rows of 9: pc offset in the module, category, widest access, requests,
// bytes, sectors, conflicts, accesses, unique bytes (global). Returns the
// number of rows there are.
CARAFE_TRACE_API int carafe_sim_trace_sites(unsigned long long* out, int max_rows) {
  Dl_info info{};
  uintptr_t base = dladdr(reinterpret_cast<void*>(&carafe_sim_trace_sites), &info)
                       ? uintptr_t(info.dli_fbase)
                       : 0;
  int rows = 0;
  for (const Site& s : g_sites)
    for (int c = 0; c < CATEGORIES; ++c) {
      if (!s.cat[c].requests) continue;
      if (rows < max_rows) {
        unsigned long long* row = out + 9 * rows;
        const Totals& t = s.cat[c];
        row[0] = s.pc - base;
        row[1] = unsigned(c);
        row[2] = s.size[c];
        row[3] = t.requests;
        row[4] = t.bytes;
        row[5] = t.sectors;
        row[6] = t.conflicts;
        row[7] = t.accesses;
        row[8] = c < 2 ? s.unique[c].count() : 0;
      }
      ++rows;
    }
  return rows;
}

#include "cuda_sim_trace_hooks.h"
