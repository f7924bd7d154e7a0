// StorageCache: keeps the bytes of released chunk storage for the next gather or
// gradient buffer of the same size. Internal to src/engine.
//
// Note [storage cache]: gathered chunks and gradient buffers come and go every step
// (Note [gathered storage]). Allocations that large come from mmap and go back to the
// kernel when freed, so every step would page-fault its whole working set in again
// (measured: stage 2's iteration 867 ms with, 751 ms without, for a 100M model). The
// cache keeps freed storage, by size, up to the peak working set of the last step (so
// it never holds more than one step's worth), each entry a compute reservation of kind
// "buffers": it never takes memory the budget does not have, and release_all() gives
// everything back when a reservation elsewhere does not fit.
#pragma once

#include <cstdint>
#include <map>

#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>

#include "strata/tiers/tier_allocator.h"

namespace strata::engine {

class StorageCache {
 public:
  explicit StorageCache(tiers::TierAllocator& tiers) : tiers_(tiers) {}
  ~StorageCache() { release_all(); }

  // Gives t's storage its bytes: a cached allocation of that size, or a new one.
  void alloc(const at::Tensor& t);
  // Takes t's storage bytes away (the storage object stays, Note [gathered storage]),
  // into the cache when it has room.
  void free(const at::Tensor& t);
  // Drops every cached allocation.
  void release_all();
  // At the end of a step: the cap becomes the peak of bytes in use since the last call.
  void end_step();

  std::uint64_t cached_bytes() const { return cached_; }

 private:
  struct Entry {
    at::DataPtr data;
    tiers::Reservation res;
  };
  tiers::TierAllocator& tiers_;
  std::multimap<std::size_t, Entry> free_;
  std::uint64_t cached_ = 0;
  std::uint64_t in_use_ = 0, peak_in_use_ = 0;
  std::uint64_t cap_ = 0;  // nothing is kept before the first step has shown its working set
};

}  // namespace strata::engine
