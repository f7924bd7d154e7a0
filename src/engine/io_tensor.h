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
#include <span>

#include <ATen/ATen.h>

namespace strata::engine {

inline constexpr std::uintptr_t kIoAlignBytes = 4096;

// A tensor's bytes, for the swap store.
inline std::span<std::byte> bytes_of(const at::Tensor& t) {
  return {static_cast<std::byte*>(t.data_ptr()), static_cast<std::size_t>(t.numel()) * t.element_size()};
}

inline bool io_aligned(const at::Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % kIoAlignBytes == 0;
}

// n elements, uninitialized, starting on a 4 KiB boundary: a view into a storage at
// most one page larger.
inline at::Tensor aligned_empty(std::int64_t n, at::ScalarType dtype) {
  const auto elem = static_cast<std::int64_t>(c10::elementSize(dtype));
  at::Tensor raw = at::empty({n + static_cast<std::int64_t>(kIoAlignBytes) / elem}, dtype);
  const auto addr = reinterpret_cast<std::uintptr_t>(raw.data_ptr());
  const auto skip = static_cast<std::int64_t>((kIoAlignBytes - addr % kIoAlignBytes) % kIoAlignBytes) / elem;
  return raw.narrow(0, skip, n);
}

}  // namespace strata::engine
