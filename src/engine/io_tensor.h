// Tensors as swap-store payloads. Internal to src/engine (and src/ckpt, above it).
//
// The swap store moves a span that starts on a 4 KiB boundary in place (O_DIRECT, no
// copy); any other span is copied through pool buffers (in pieces when large, Note
// [pieced transfer]), synchronously. So every host tensor the engine reads a record into
// or writes one from is allocated 4 KiB-aligned (aligned_empty), and the chunk runtime
// bounces the rare unaligned one through such a tensor itself.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include <ATen/ATen.h>

#include "strata/base/aligned.h"
#include "strata/tiers/memory_probe.h"

namespace strata::engine {

inline constexpr std::uintptr_t kIoAlignBytes = 4096;

// A tensor's bytes, for the swap store.
inline std::span<std::byte> bytes_of(const at::Tensor& t) {
  return {static_cast<std::byte*>(t.data_ptr()), static_cast<std::size_t>(t.numel()) * t.element_size()};
}

inline bool io_aligned(const at::Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % kIoAlignBytes == 0;
}

// Tensors of at least this many bytes sit on transparent huge pages: O_DIRECT into
// 4 KiB pages moved about half the bytes per second here (Note [huge pages] in
// io/buffer_pool.h; strata bench io, 1 MiB records in a ring: 1.37 GB/s read on 4 KiB
// pages, 2.69 GB/s on huge pages). Below this size most of a tensor would be its
// partial last huge page, which stays on small pages.
inline constexpr std::size_t kHugeTensorBytes = std::size_t{8} << 20;

// Note [pinned host tensors]: a host tensor that a compute device off the CPU copies to
// or from (a parameter shard on host, a gradient shard on its way to host, a staging
// buffer) is page-locked, so that the copy runs by DMA at the link's speed rather than
// through the driver's pageable bounce buffers. LibTorch allocates it (at::empty's
// pinned_memory: the accelerator's caching host allocator in 2.x). A CPU-only LibTorch
// cannot pin (it throws), and a CPU compute device gains nothing from it, so only a
// compute device off the CPU asks. An io::BufferPool is pinned through its PinHooks
// instead (tiers::pin_hooks_for: the nvme parameter Load buffers).
enum class HostMemory { kPageable, kPinned };

inline HostMemory host_memory_for(c10::Device compute) {
  return compute.is_cpu() ? HostMemory::kPageable : HostMemory::kPinned;
}

// n elements on the host, uninitialized, for copies to and from `compute`: pinned when
// it is off the CPU. For tensors the swap store does not move (no alignment).
inline at::Tensor host_empty_for(c10::Device compute, std::int64_t n, at::ScalarType dtype) {
  return at::empty({n}, at::TensorOptions(dtype).pinned_memory(host_memory_for(compute) == HostMemory::kPinned));
}

// n elements, uninitialized, starting on a 4 KiB boundary. Pageable: from
// kHugeTensorBytes on a 2 MiB one, on huge pages (strata's own buffer under the tensor,
// counted by tiers::MemoryProbe as LibTorch's allocations are, since the auto placement
// subtracts the tiers' bytes from that count). Pinned: Note [pinned host tensors]. Throws
// c10::Error when the memory cannot be had, as at::empty does.
inline at::Tensor aligned_empty(std::int64_t n, at::ScalarType dtype, HostMemory memory = HostMemory::kPageable) {
  const auto elem = static_cast<std::int64_t>(c10::elementSize(dtype));
  const auto bytes = static_cast<std::size_t>(n * elem);
  if (memory == HostMemory::kPageable && bytes >= kHugeTensorBytes) {
    Result<AlignedBuffer> buf = AlignedBuffer::allocate(bytes, kIoAlignBytes, Pages::kHuge);
    if (!buf) TORCH_CHECK(false, buf.error().message());
    tiers::MemoryProbe::add_external(bytes);
    return at::from_blob(
        buf->release(), {n},
        [bytes](void* p) {
          std::free(p);
          tiers::MemoryProbe::remove_external(bytes);
        },
        at::TensorOptions(dtype));
  }
  // A view into a storage at most one page larger.
  at::Tensor raw = at::empty({n + static_cast<std::int64_t>(kIoAlignBytes) / elem},
                             at::TensorOptions(dtype).pinned_memory(memory == HostMemory::kPinned));
  const auto addr = reinterpret_cast<std::uintptr_t>(raw.data_ptr());
  const auto skip = static_cast<std::int64_t>((kIoAlignBytes - addr % kIoAlignBytes) % kIoAlignBytes) / elem;
  return raw.narrow(0, skip, n);
}

}  // namespace strata::engine
