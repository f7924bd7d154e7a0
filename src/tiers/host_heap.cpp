#include "strata/tiers/host_heap.h"

#include <atomic>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace strata::tiers {
namespace {
std::atomic<std::uint64_t> g_trims{0};
}  // namespace

void release_free_heap() {
  g_trims.fetch_add(1, std::memory_order_relaxed);
#if defined(__GLIBC__)
  malloc_trim(0);  // Note [host heap]
#endif
}

std::uint64_t free_heap_bytes() {
#if defined(__GLIBC__) && __GLIBC_PREREQ(2, 33)
  return mallinfo2().fordblks;
#else
  return 0;  // unknown (mallinfo2 is glibc 2.33+): HeapTrimPolicy then never trims after steps
#endif
}

std::uint64_t heap_trims() { return g_trims.load(std::memory_order_relaxed); }

bool HeapTrimPolicy::after_step() {
  const std::uint64_t free_bytes = free_heap_bytes();
  if (!should_trim(free_bytes)) return false;
  release_free_heap();
  reference_ = free_bytes;
  return true;
}

}  // namespace strata::tiers
