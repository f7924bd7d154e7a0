// How many threads one rank should use: the machine's cores shared by the ranks that
// run on it (LOCAL_WORLD_SIZE, set by strata launch and torchrun). Without this, N
// ranks each start one intra-op thread per core and oversubscribe the machine.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <thread>

#include <ATen/Parallel.h>

#include "strata/base/blas.h"

namespace strata::cli {

inline int threads_per_rank() {
  int local = 1;
  if (const char* v = std::getenv("LOCAL_WORLD_SIZE"); v != nullptr) local = std::max(1, std::atoi(v));
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores / local);
}

// Sets LibTorch's intra-op threads (OpenMP, which oneDNN uses too) and OpenBLAS's to
// threads_per_rank() and returns it: each pool would otherwise take every core.
inline int apply_rank_threads() {
  const int n = threads_per_rank();
  at::set_num_threads(n);
  set_blas_threads(n);
  return n;
}

}  // namespace strata::cli
