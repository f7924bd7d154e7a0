// AlignedBuffer: an owning, move-only block of aligned bytes.
//
//   auto buf = strata::AlignedBuffer::allocate(64 << 20, 4096);   // Result<AlignedBuffer>
//   if (!buf) return make_error(std::move(buf).error());
//   float* p = buf->as<float>();
//
// O_DIRECT needs 4 KiB-aligned buffers and SIMD kernels like 64-byte alignment, so
// every large host buffer in strata comes from here. The memory is not touched on
// allocation; call zero() or fill it to fault the pages in.
//
// Pages::kHuge: 2 MiB-aligned and advised MADV_HUGEPAGE before it is touched, so
// transparent huge pages back it wherever THP is "always" or "madvise". Buffers that
// O_DIRECT reads or writes should be huge (Note [huge pages] in io/buffer_pool.h: on the
// development disk reads into 4 KiB pages ran at half the speed).
#pragma once

#include <cstddef>
#include <span>
#include <utility>

#include "strata/base/status.h"

namespace strata {

enum class Pages { kSmall, kHuge };

class AlignedBuffer {
 public:
  static constexpr std::size_t kHugePage = std::size_t{2} << 20;

  AlignedBuffer() = default;
  // alignment must be a power of two >= sizeof(void*). Zero bytes gives an empty buffer.
  static Result<AlignedBuffer> allocate(std::size_t bytes, std::size_t alignment = 64, Pages pages = Pages::kSmall);

  AlignedBuffer(AlignedBuffer&& other) noexcept { swap(other); }
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept {
    AlignedBuffer(std::move(other)).swap(*this);
    return *this;
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer();

  std::byte* data() { return data_; }
  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  std::size_t alignment() const { return alignment_; }
  bool empty() const { return size_ == 0; }

  template <class T>
  T* as() { return reinterpret_cast<T*>(data_); }
  template <class T>
  const T* as() const { return reinterpret_cast<const T*>(data_); }
  std::span<std::byte> span() { return {data_, size_}; }
  std::span<const std::byte> span() const { return {data_, size_}; }

  void zero();
  // Gives up ownership: the caller frees the memory with std::free.
  std::byte* release() {
    size_ = 0;
    return std::exchange(data_, nullptr);
  }

  void swap(AlignedBuffer& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    std::swap(alignment_, other.alignment_);
  }

 private:
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t alignment_ = 0;
};

// Rounds n up to a multiple of `to` (a power of two or any positive value).
constexpr std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

}  // namespace strata
