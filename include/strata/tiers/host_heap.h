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
//     is placed at setup, and after each optimizer step. The heap keeps serving the hot
//     path; its free pages go back at those points.
// The engine does the second.
#pragma once

namespace strata::tiers {

// Returns the heap's free pages to the system (glibc malloc_trim); a no-op elsewhere.
void release_free_heap();

}  // namespace strata::tiers
