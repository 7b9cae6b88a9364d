// cuda_sim_orders.h -- the orders in which cuda_sim_runtime.cpp resumes a
// block's threads (runtime.py's _ORDERS). Included by cuda_sim_runtime.cpp only.
//
// forward, reverse, random: every runnable thread is resumed once per round,
// in thread order, reversed or shuffled, and runs to its next barrier or warp
// primitive; all warps advance together.
// warp-serial, random-warp: one warp at a time (in order, or shuffled afresh
// after every block barrier) runs until all its threads wait at a block barrier
// or have exited, so a warp barrier standing in for a block barrier lets the
// first warp overwrite what later warps still read.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace carafe_sim {

enum Order : int {
  ORDER_FORWARD = 0,
  ORDER_REVERSE,
  ORDER_RANDOM,
  ORDER_WARP_SERIAL,
  ORDER_RANDOM_WARP,
};

struct Rng {
  uint64_t s;
  uint64_t next() {  // splitmix64
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
};

template <class T>
static void shuffle(T* first, size_t n, Rng& rng) {
  for (size_t i = n; i > 1; --i) std::swap(first[i - 1], first[rng.next() % i]);
}

static bool warp_granular(int order) {
  return order == ORDER_WARP_SERIAL || order == ORDER_RANDOM_WARP;
}

// The warps in the order they run until the next block barrier.
static void warp_order(int order, Rng& rng, std::vector<unsigned>& warps) {
  for (unsigned w = 0; w < warps.size(); ++w) warps[w] = w;
  if (order == ORDER_RANDOM_WARP) shuffle(warps.data(), warps.size(), rng);
}

// perm[0, n): threads in the order a round resumes them.
static void round_order(int order, Rng& rng, unsigned* perm, unsigned n) {
  if (order == ORDER_REVERSE) std::reverse(perm, perm + n);
  if (order == ORDER_RANDOM) shuffle(perm, n, rng);
}

}  // namespace carafe_sim
