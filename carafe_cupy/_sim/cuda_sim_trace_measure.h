// cuda_sim_trace_measure.h -- what one warp-level request costs (see cuda_sim_trace.cpp).
//
// Included by cuda_sim_trace.cpp only.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <utility>
#include <vector>

namespace carafe_sim::trace_measure {

// A lane of one request, as the measures see it.
struct Lane {
  uintptr_t addr;
  uint32_t size;
  uint32_t lane;
};

// Distinct bytes: 32-byte sector -> bit mask of its bytes (open addressing).
class ByteSet {
 public:
  void clear() {
    keys_.assign(1024, 0);
    masks_.assign(1024, 0);
    used_ = 0;
  }
  void add(uintptr_t addr, size_t size) {
    if (keys_.empty()) clear();
    while (size) {
      uintptr_t sector = addr >> 5;
      unsigned first = unsigned(addr & 31);
      unsigned n = unsigned(std::min<size_t>(size, 32 - first));
      uint32_t bits = (n == 32 ? 0xffffffffu : ((1u << n) - 1u)) << first;
      *slot(sector) |= bits;
      addr += n;
      size -= n;
    }
  }
  uint64_t count() const {
    uint64_t total = 0;
    for (size_t i = 0; i < keys_.size(); ++i)
      if (keys_[i]) total += unsigned(__builtin_popcount(masks_[i]));
    return total;
  }

 private:
  uint32_t* slot(uintptr_t sector) {
    uintptr_t key = sector + 1;  // 0 marks an empty slot
    size_t mask = keys_.size() - 1;
    for (size_t i = (key * 0x9E3779B97F4A7C15ull) >> 20 & mask;; i = (i + 1) & mask) {
      if (keys_[i] == key) return &masks_[i];
      if (keys_[i] == 0) {
        if (2 * (used_ + 1) > keys_.size()) {
          grow();
          return slot(sector);
        }
        keys_[i] = key;
        ++used_;
        return &masks_[i];
      }
    }
  }
  void grow() {
    std::vector<uintptr_t> keys(keys_.size() * 2, 0);
    std::vector<uint32_t> masks(keys.size(), 0);
    keys.swap(keys_);
    masks.swap(masks_);
    used_ = 0;
    for (size_t i = 0; i < keys.size(); ++i)
      if (keys[i]) *slot(keys[i] - 1) = masks[i];
  }
  std::vector<uintptr_t> keys_;
  std::vector<uint32_t> masks_;
  size_t used_ = 0;
};

// GPU allocations start on 256-byte boundaries, host ones need not: sectors
// are counted from the start of the tensor (pointer argument) an address
// lies in, as they would be on the device.
inline uintptr_t device_address(uintptr_t a, const std::vector<uintptr_t>& bases) {
  auto it = std::upper_bound(bases.begin(), bases.end(), a);
  if (it == bases.begin()) return a;
  size_t index = size_t(it - bases.begin());  // 1 + the tensor's index
  return (uintptr_t(index) << 48) | (a - *std::prev(it));
}

// Distinct 32-byte sectors of one global request; `bases`: the launch's
// tensors (pointer arguments), sorted.
inline uint64_t count_sectors(const Lane* r, size_t n, const std::vector<uintptr_t>& bases,
                              std::vector<uintptr_t>& scratch) {
  scratch.clear();
  for (size_t i = 0; i < n; ++i) {
    uintptr_t a = device_address(r[i].addr, bases);
    for (uintptr_t s = a >> 5; s <= (a + r[i].size - 1) >> 5; ++s) scratch.push_back(s);
  }
  std::sort(scratch.begin(), scratch.end());
  return uint64_t(std::unique(scratch.begin(), scratch.end()) - scratch.begin());
}

// Wavefronts of one shared request and the number of non-empty phases.
inline std::pair<uint64_t, uint64_t> count_wavefronts(const Lane* r, size_t n,
                                                      std::vector<uintptr_t>& scratch) {
  unsigned widest = 0;
  for (size_t i = 0; i < n; ++i) widest = std::max<unsigned>(widest, unsigned(r[i].size));
  const unsigned lanes_per_phase = widest <= 4 ? 32 : widest <= 8 ? 16 : 8;
  uint64_t wavefronts = 0, phases = 0;
  for (unsigned phase = 0; phase < 32 / lanes_per_phase; ++phase) {
    scratch.clear();
    for (size_t i = 0; i < n; ++i) {
      if (r[i].lane / lanes_per_phase != phase) continue;
      for (uintptr_t w = r[i].addr >> 2; w <= (r[i].addr + r[i].size - 1) >> 2; ++w)
        scratch.push_back(((w & 31) << 58) | (w >> 5));  // bank, then word within the bank
    }
    if (scratch.empty()) continue;
    std::sort(scratch.begin(), scratch.end());
    scratch.erase(std::unique(scratch.begin(), scratch.end()), scratch.end());
    uint64_t most = 0, run = 0;
    for (size_t i = 0; i < scratch.size(); ++i) {
      run = (i && scratch[i] >> 58 == scratch[i - 1] >> 58) ? run + 1 : 1;
      most = std::max(most, run);
    }
    wavefronts += most;
    ++phases;
  }
  return {wavefronts, phases};
}

}  // namespace carafe_sim::trace_measure
