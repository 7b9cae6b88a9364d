// cuda_sim_observer.h -- what the scheduler tells an observer of a launch.
//
// cuda_sim_runtime.cpp calls these hooks when g_observer is set; only traced
// modules (cuda_sim_trace.cpp linked in) set it, so plain modules pay one
// null check per block and per barrier.
#pragma once

#include "cuda_sim.h"

namespace carafe_sim {

struct LaunchObserver {
  // Before the first block. Fiber stacks (if any) lie in [stacks, stacks + stack_bytes).
  virtual void launch_begin(const KernelEntry* entry, void** args, const unsigned* grid,
                            const unsigned* block, char* dyn_shared, size_t dyn_bytes,
                            const char* stacks, size_t stack_bytes) = 0;
  // Before block number `linear` (x fastest); false skips the block.
  virtual bool block_begin(unsigned long long linear) = 0;
  // Every thread of the block has reached the same point: a released
  // __syncthreads, or the end of the block.
  virtual void converged() = 0;

 protected:
  ~LaunchObserver() = default;
};

CARAFE_SIM_HIDDEN extern LaunchObserver* g_observer;

}  // namespace carafe_sim
