#include "strata/io/buffer_pool.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <map>
#include <mutex>

#include "strata/base/aligned.h"
#include "strata/base/units.h"
#include "strata/io/file_engine.h"

namespace strata::io {
namespace {

std::mutex g_hooks_mu;
PinHooks g_hooks;

}  // namespace

void set_default_pin_hooks(PinHooks hooks) {
  std::lock_guard lock(g_hooks_mu);
  g_hooks = hooks;
}

PinHooks default_pin_hooks() {
  std::lock_guard lock(g_hooks_mu);
  return g_hooks;
}

namespace detail {

// The pool's memory: an anonymous mapping, 2 MiB-aligned when huge pages are wanted
// (Note [huge pages]). Move-only; unmaps on destruction.
class Arena {
 public:
  static constexpr std::size_t kHugePage = std::size_t{2} << 20;

  static Result<Arena> map(std::size_t bytes, bool huge) {
    Arena a;
    const std::size_t align = huge ? kHugePage : 4096;
    // The usable size stays `bytes` (the budget is a hard bound); the mapping is
    // rounded up to whole huge pages, and the part past `bytes` is never touched.
    a.size_ = bytes;
    a.map_size_ = round_up(bytes, align);
    // Over-map by one alignment unit, then trim both ends to an aligned range.
    const std::size_t span = a.map_size_ + (huge ? align : 0);
    void* p = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      return make_error(errno_error(errno, "mmap").with_length(span).with_note("allocating the buffer pool"));
    }
    auto base = reinterpret_cast<std::uintptr_t>(p);
    const std::uintptr_t start = round_up(base, align);
    if (start > base) ::munmap(p, start - base);
    if (const std::uintptr_t end = start + a.map_size_; end < base + span) {
      ::munmap(reinterpret_cast<void*>(end), base + span - end);
    }
    a.data_ = reinterpret_cast<std::byte*>(start);
    // Before any page is touched, so the first faults (or the io_uring pin) already
    // take huge pages. Fails harmlessly where THP is off.
    a.huge_ = huge && ::madvise(a.data_, a.map_size_, MADV_HUGEPAGE) == 0;
    return a;
  }

  Arena() = default;
  Arena(Arena&& o) noexcept { swap(o); }
  Arena& operator=(Arena&& o) noexcept {
    Arena(std::move(o)).swap(*this);
    return *this;
  }
  ~Arena() {
    if (data_ != nullptr) ::munmap(data_, map_size_);
  }
  void swap(Arena& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    std::swap(map_size_, o.map_size_);
    std::swap(huge_, o.huge_);
  }
  std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  bool huge() const { return huge_; }
  std::span<std::byte> span() const { return {data_, size_}; }

 private:
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;      // usable bytes
  std::size_t map_size_ = 0;  // mapped bytes
  bool huge_ = false;
};

// Member order matters for destruction: the registration goes before the arena.
struct PoolState {
  Arena arena;
  BufferRegistration registration;
  PinHooks pin;
  bool pinned = false;
  std::size_t alignment = 4096;
  std::chrono::milliseconds timeout{0};

  mutable std::mutex mu;
  std::condition_variable cv;
  std::map<std::size_t, std::size_t> free;  // offset -> length; disjoint, coalesced
  std::size_t cursor = 0;                   // Note [rotating placement]
  BufferPool::Stats stats;

  ~PoolState() {
    if (pinned && pin.unpin != nullptr) pin.unpin(pin.ctx, arena.data(), arena.size());
  }

  std::size_t largest_free() const {
    std::size_t best = 0;
    for (const auto& [off, len] : free) best = std::max(best, len);
    return best;
  }

  // Next-fit: the first free range at or after the cursor (a range that contains the
  // cursor is used from the cursor on), wrapping around. Returns the offset or npos.
  std::size_t take(std::size_t need) {
    auto carve = [&](std::map<std::size_t, std::size_t>::iterator it, std::size_t at) {
      const std::size_t off = it->first, len = it->second;
      free.erase(it);
      if (at > off) free.emplace(off, at - off);
      if (at + need < off + len) free.emplace(at + need, off + len - at - need);
      cursor = at + need == arena.size() ? 0 : at + need;
      return at;
    };
    auto it = free.upper_bound(cursor);
    if (it != free.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second >= cursor + need && prev->first <= cursor) return carve(prev, cursor);
    }
    for (auto j = it; j != free.end(); ++j) {
      if (j->second >= need) return carve(j, j->first);
    }
    for (auto j = free.begin(); j != it; ++j) {
      if (j->second >= need) return carve(j, j->first);
    }
    return std::string::npos;
  }

  void give_back(std::size_t off, std::size_t len) {
    auto [it, inserted] = free.emplace(off, len);
    if (auto next = std::next(it); next != free.end() && off + len == next->first) {
      it->second += next->second;
      free.erase(next);
    }
    if (it != free.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second == off) {
        prev->second += it->second;
        free.erase(it);
      }
    }
  }
};

}  // namespace detail

void PooledBuffer::reset() {
  if (!pool_) return;
  if (capacity_ > 0) {
    detail::PoolState& s = *pool_;
    {
      std::lock_guard lock(s.mu);
      s.give_back(static_cast<std::size_t>(data_ - s.arena.data()), capacity_);
      s.stats.in_use_bytes -= capacity_;
      --s.stats.buffers_in_use;
    }
    s.cv.notify_all();
  }
  pool_.reset();
  data_ = nullptr;
  size_ = capacity_ = 0;
}

void PooledBuffer::swap(PooledBuffer& other) noexcept {
  std::swap(pool_, other.pool_);
  std::swap(data_, other.data_);
  std::swap(size_, other.size_);
  std::swap(capacity_, other.capacity_);
}

Result<BufferPool> BufferPool::create(const BufferPoolOptions& options) {
  if (options.budget_bytes == 0) return make_error(ErrorCode::kInvalidArgument, "buffer pool budget must be > 0");
  if (options.alignment < 4096 || (options.alignment & (options.alignment - 1)) != 0) {
    return make_error(ErrorCode::kInvalidArgument, "buffer pool alignment must be a power of two >= 4096, got {}",
                      options.alignment);
  }
  auto state = std::make_shared<detail::PoolState>();
  state->alignment = options.alignment;
  state->timeout = options.acquire_timeout;
  STRATA_ASSIGN_OR_RETURN(state->arena, detail::Arena::map(round_up(options.budget_bytes, options.alignment),
                                                           options.huge_pages));
  state->free.emplace(0, state->arena.size());
  state->stats.budget_bytes = state->arena.size();
  state->pin = options.pin.active() ? options.pin : default_pin_hooks();
  if (state->pin.active()) {
    if (auto st = state->pin.pin(state->pin.ctx, state->arena.data(), state->arena.size()); !st) {
      return make_error(std::move(st).error().with_length(state->arena.size()).with_note("pinning the buffer pool"));
    }
    state->pinned = true;
  }
  if (options.engine != nullptr) {
    STRATA_ASSIGN_OR_RETURN(state->registration, options.engine->register_buffer(state->arena.span()));
  }
  state->stats.registered = state->registration.active();
  state->stats.pinned = state->pinned;
  state->stats.huge_pages = state->arena.huge();
  BufferPool pool;
  pool.state_ = std::move(state);
  return pool;
}

Result<PooledBuffer> BufferPool::acquire(std::size_t bytes) {
  if (!state_) return make_error(ErrorCode::kFailedPrecondition, "acquire on an empty BufferPool");
  return acquire(bytes, state_->timeout);
}

Result<PooledBuffer> BufferPool::acquire(std::size_t bytes, std::chrono::nanoseconds timeout) {
  if (!state_) return make_error(ErrorCode::kFailedPrecondition, "acquire on an empty BufferPool");
  detail::PoolState& s = *state_;
  PooledBuffer out;
  out.pool_ = state_;
  if (bytes == 0) return out;
  const std::size_t need = round_up(bytes, s.alignment);
  if (need > s.arena.size()) {
    return make_error(ErrorCode::kResourceExhausted, "buffer pool: {} requested, but the whole budget is {}",
                      format_bytes(bytes), format_bytes(s.arena.size()))
        .with_length(bytes);
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock lock(s.mu);
  ++s.stats.acquires;
  bool waited = false;
  for (;;) {
    if (const std::size_t off = s.take(need); off != std::string::npos) {
      out.data_ = s.arena.data() + off;
      out.size_ = bytes;
      out.capacity_ = need;
      s.stats.in_use_bytes += need;
      s.stats.peak_bytes = std::max(s.stats.peak_bytes, s.stats.in_use_bytes);
      ++s.stats.buffers_in_use;
      return out;
    }
    if (std::chrono::steady_clock::now() >= deadline) break;
    if (!waited) {
      waited = true;
      ++s.stats.waits;
    }
    s.cv.wait_until(lock, deadline);
  }
  ++s.stats.timeouts;
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count();
  return make_error(ErrorCode::kResourceExhausted,
                    "buffer pool budget spent: waited {} ms for {}; budget {}, in use {} in {} buffers, "
                    "largest free range {}",
                    ms, format_bytes(bytes), format_bytes(s.arena.size()), format_bytes(s.stats.in_use_bytes),
                    s.stats.buffers_in_use, format_bytes(s.largest_free()))
      .with_length(bytes);
}

std::size_t BufferPool::budget() const { return state_->arena.size(); }

BufferPool::Stats BufferPool::stats() const {
  std::lock_guard lock(state_->mu);
  Stats st = state_->stats;
  st.largest_free_bytes = state_->largest_free();
  return st;
}

}  // namespace strata::io
