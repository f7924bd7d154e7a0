// BufferPool: a bounded arena of 4 KiB-aligned I/O buffers with a byte budget.
//
//   io::BufferPoolOptions po;
//   po.budget_bytes = 1ull << 30;          // the arena; nothing is allocated beyond it
//   po.engine = &engine;                   // register the arena as io_uring fixed buffers
//   STRATA_ASSIGN_OR_RETURN(io::BufferPool pool, io::BufferPool::create(po));
//   STRATA_ASSIGN_OR_RETURN(io::PooledBuffer buf, pool.acquire(64 << 20));  // waits if spent
//   store.get(key, buf.span());            // buf returns to the pool when it goes away
//
// Note [pool arena]: the pool is one allocation of budget_bytes, made (and registered,
// and pinned) once; buffers are ranges of it, 4 KiB-granular, of any size up to the
// budget — "sized to the largest swap record" is simply a request of that size. The
// byte budget is therefore a hard bound: acquire() never allocates. When no free range
// is large enough, acquire() waits for releases up to its timeout and then fails with
// kResourceExhausted, naming the budget, the bytes in use and the largest free range.
//
// Note [huge pages]: the arena is an anonymous mapping, 2 MiB-aligned and advised
// MADV_HUGEPAGE before it is touched, so transparent huge pages back it wherever THP is
// "always" or "madvise". On the development machine's virtual disk this is what decides
// O_DIRECT read speed: reads into an 8 MiB ring on 4 KiB pages run at ~1.2 GB/s, into
// the same ring on huge pages at ~3.5 GB/s, and a 512 MiB buffer on 4 KiB pages only
// partly recovers (~2.2 GB/s) — the "large destination buffers read faster" effect is
// mostly fewer, larger pages (docs/performance.md). Buffers for swap-ins should
// therefore come from this pool or, outside it, ask for huge pages themselves
// (AlignedBuffer's Pages::kHuge; engine/io_tensor.h's aligned_empty from 8 MiB), not
// from plain malloc.
//
// Note [rotating placement]: ranges are handed out next-fit — each search starts where
// the previous buffer ended and wraps around — instead of lowest-address-first, so a
// pipeline that acquires and releases buffers in turn spreads its I/O over the whole
// arena rather than one small ring, and a buffer just released is the last to be
// reused (the caller may still be reading it on another device or stream).
//
// Pinning: when CUDA is present the tiers layer installs PinHooks (cudaHostRegister and
// its inverse) through set_default_pin_hooks() or the options; the pool calls them once
// for the arena. On CPU-only builds the hooks are null and nothing is pinned.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "strata/base/status.h"

namespace strata::io {

class FileEngine;

struct PinHooks {
  using PinFn = Status (*)(void* ctx, std::byte* data, std::size_t bytes);
  using UnpinFn = void (*)(void* ctx, std::byte* data, std::size_t bytes);
  PinFn pin = nullptr;
  UnpinFn unpin = nullptr;
  void* ctx = nullptr;
  bool active() const { return pin != nullptr; }
};

// Hooks for pools whose options carry none. Set once, before pools are created.
void set_default_pin_hooks(PinHooks hooks);
PinHooks default_pin_hooks();

struct BufferPoolOptions {
  std::size_t budget_bytes = 0;  // > 0; rounded up to the alignment
  std::size_t alignment = 4096;  // a power of two >= 4096 (O_DIRECT)
  std::chrono::milliseconds acquire_timeout{30'000};
  bool huge_pages = true;        // Note [huge pages]
  PinHooks pin;                  // empty: default_pin_hooks()
  FileEngine* engine = nullptr;  // when set, the arena is registered with it
};

namespace detail {
struct PoolState;
}

// A range of the arena. Move-only; returns to the pool when destroyed or reset().
class PooledBuffer {
 public:
  PooledBuffer() = default;
  PooledBuffer(PooledBuffer&& other) noexcept { swap(other); }
  PooledBuffer& operator=(PooledBuffer&& other) noexcept {
    PooledBuffer(std::move(other)).swap(*this);
    return *this;
  }
  PooledBuffer(const PooledBuffer&) = delete;
  PooledBuffer& operator=(const PooledBuffer&) = delete;
  ~PooledBuffer() { reset(); }

  bool valid() const { return pool_ != nullptr; }
  std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }          // bytes requested
  std::size_t capacity() const { return capacity_; }  // size rounded up to the alignment
  std::span<std::byte> span() const { return {data_, size_}; }
  // The whole aligned capacity, for O_DIRECT transfers of a padded record.
  std::span<std::byte> padded_span() const { return {data_, capacity_}; }
  template <class T>
  T* as() const { return reinterpret_cast<T*>(data_); }

  void reset();
  void swap(PooledBuffer& other) noexcept;

 private:
  friend class BufferPool;
  std::shared_ptr<detail::PoolState> pool_;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

class BufferPool {
 public:
  struct Stats {
    std::size_t budget_bytes = 0;
    std::size_t in_use_bytes = 0;
    std::size_t peak_bytes = 0;
    std::size_t buffers_in_use = 0;
    std::size_t largest_free_bytes = 0;
    std::uint64_t acquires = 0;
    std::uint64_t waits = 0;     // acquires that had to wait for a release
    std::uint64_t timeouts = 0;  // acquires that gave up
    bool registered = false;     // the arena is an io_uring fixed buffer
    bool pinned = false;
    bool huge_pages = false;     // MADV_HUGEPAGE accepted for the arena
  };

  static Result<BufferPool> create(const BufferPoolOptions& options);

  BufferPool() = default;
  BufferPool(BufferPool&&) noexcept = default;
  BufferPool& operator=(BufferPool&&) noexcept = default;

  bool valid() const { return state_ != nullptr; }
  // Waits up to the pool's acquire_timeout. A request larger than the budget fails at
  // once (kResourceExhausted); zero bytes gives an empty, valid buffer.
  Result<PooledBuffer> acquire(std::size_t bytes);
  Result<PooledBuffer> acquire(std::size_t bytes, std::chrono::nanoseconds timeout);
  // Never waits.
  Result<PooledBuffer> try_acquire(std::size_t bytes) { return acquire(bytes, std::chrono::nanoseconds{0}); }

  std::size_t budget() const;
  Stats stats() const;

 private:
  std::shared_ptr<detail::PoolState> state_;
};

}  // namespace strata::io
