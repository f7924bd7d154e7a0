// MemoryProbe: live bytes of CPU tensor memory, measured at the allocator.
//
//   tiers::MemoryProbe::install();                 // once, before the model allocates
//   std::uint64_t now = tiers::MemoryProbe::live_bytes();
//
// The `auto` placement policy needs the memory that is not model state (activations,
// temporaries) at each access of a step. On CPU, LibTorch has no allocator statistics,
// so strata wraps the CPU allocator and counts bytes as they are allocated and freed:
// non-model bytes = live bytes - the bytes strata's own tiers account for.
// On GPUs the same numbers come from the device allocator; this probe is CPU-only.
#pragma once

#include <cstdint>

namespace strata::tiers {

class MemoryProbe {
 public:
  // Wraps LibTorch's CPU allocator with a counting one. Idempotent.
  static void install();
  static bool installed();
  static std::uint64_t live_bytes();
  // Tensor memory LibTorch's allocator did not hand out (from_blob over strata's own
  // huge-page buffers, engine/io_tensor.h): counted in live_bytes() all the same.
  static void add_external(std::uint64_t bytes);
  static void remove_external(std::uint64_t bytes);
  static std::uint64_t peak_bytes();
  static void reset_peak();
};

}  // namespace strata::tiers
