// Giving freed host memory back to the system.
//
// Note [host heap]: glibc serves an allocation from its heap unless it is at least the
// mmap threshold, and by default it raises that threshold to the size of every mmapped
// block it frees (up to 32 MiB). After the first large frees, every buffer under 32 MiB
// (a unit's parameters while it is built, a chunk shard, a staging tensor, autograd's
// temporaries) comes from the heap, and the heap keeps the pages of freed buffers
// whenever anything above them is still alive. Measured on gpt2-large with every state
// on nvme: 8.7 GB peak RSS while the engine held 0.3 GiB on host.
// Two ways out were measured on that run:
//   - a fixed 1 MiB mmap threshold: 1.2 GB, but every 1-32 MiB temporary of forward
//     and backward became a fresh mapping whose pages the kernel zeroes: 6 tokens/s
//     instead of 10;
//   - release_free_heap() (malloc_trim) where a phase has freed a lot: after each chunk
//     is placed at setup, and after each unit of a deferred model is built.
// The engine does the second. After an optimizer step it trims only when the heap has
// grown (HeapTrimPolicy): a step frees its activations and temporaries, and the next
// step needs the same bytes again. Trimming them after every step made every step fault
// its working set back in page by page, which the kernel zeroes: the tiny `strata train`
// ran at 3.4K tokens/s that way and at 8.0K with the policy, at the same peak RSS
// (docs/architecture.md, Note [host heap], has the runs).
#pragma once

#include <cstdint>

namespace strata::tiers {

// Returns the heap's free pages to the system (glibc malloc_trim); a no-op elsewhere.
void release_free_heap();

// Bytes malloc holds free in its heaps (glibc mallinfo2: free chunks, resident or not);
// 0 where that is unknown (not glibc, or glibc before 2.33).
std::uint64_t free_heap_bytes();

// How many times release_free_heap() ran in this process (tests check the policy by it).
std::uint64_t heap_trims();

// After each optimizer step: trims when the heap's free bytes exceed 1.5x those at the
// last trim plus 64 MiB, so the first step's one-time frees go back, a heap that keeps
// growing is trimmed again, and a steady step keeps the pages it reuses.
class HeapTrimPolicy {
 public:
  static constexpr std::uint64_t kSlack = std::uint64_t{64} << 20;
  // Whether a step that leaves `free_bytes` free in the heap should trim it.
  bool should_trim(std::uint64_t free_bytes) const { return free_bytes > reference_ + reference_ / 2 + kSlack; }
  // Measures the heap and trims it if should_trim; returns whether it did.
  bool after_step();

 private:
  // The free bytes measured before the last trim: what mallinfo2 counts as free does not
  // shrink when the pages go back, and the next step refills the same free chunks.
  std::uint64_t reference_ = 0;
};

}  // namespace strata::tiers
