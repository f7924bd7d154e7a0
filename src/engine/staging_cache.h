// StagingCache: reused host staging buffers. Internal to src/engine.
//
// Note [reused staging]: some host buffers are filled and dropped once per chunk per
// step: gradient shards on their way to nvme (Note [gradients on nvme]) and new
// parameter shards on their way to nvme. Allocated fresh each time, every one of their
// pages is faulted in and zeroed by the kernel again each step (glibc gives large freed
// blocks back, and Note [host heap] trims the rest): at 4B parameters, 24 GB of page
// faults a step. The cache keeps up to `keep` of them for reuse, all of one capacity (the
// largest chunk's), each with its host reservation, so what sits idle between uses is
// still counted in the host tier. When every kept buffer is in use, take() makes another;
// give() keeps it only if fewer than `keep` are idle.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "io_tensor.h"
#include "strata/base/status.h"
#include "strata/tiers/tier_allocator.h"

namespace strata::engine {

class StagingCache {
 public:
  struct Buffer {
    at::Tensor full;          // `capacity` elements, 4 KiB-aligned
    tiers::Reservation res;   // its host bytes
    at::Tensor view(std::int64_t n) const { return full.narrow(0, 0, n); }
  };
  // Reserves `bytes` of host memory for one buffer.
  using Reserve = std::function<Result<tiers::Reservation>(std::uint64_t bytes)>;

  // memory: pinned for buffers a GPU copies into (Note [pinned host tensors]).
  void configure(std::int64_t capacity, at::ScalarType dtype, HostMemory memory, std::size_t keep, Reserve reserve) {
    capacity_ = capacity;
    dtype_ = dtype;
    memory_ = memory;
    keep_ = keep;
    reserve_ = std::move(reserve);
  }
  bool configured() const { return capacity_ > 0; }

  Result<Buffer> take() {
    if (!idle_.empty()) {
      Buffer b = std::move(idle_.back());
      idle_.pop_back();
      return b;
    }
    Buffer b;
    STRATA_ASSIGN_OR_RETURN(b.res, reserve_(static_cast<std::uint64_t>(capacity_) * c10::elementSize(dtype_)));
    b.full = aligned_empty(capacity_, dtype_, memory_);
    return b;
  }
  void give(Buffer b) {
    if (b.full.defined() && idle_.size() < keep_) idle_.push_back(std::move(b));
  }

 private:
  std::int64_t capacity_ = 0;
  HostMemory memory_ = HostMemory::kPageable;
  at::ScalarType dtype_ = at::kFloat;
  std::size_t keep_ = 0;
  Reserve reserve_;
  std::vector<Buffer> idle_;
};

}  // namespace strata::engine
