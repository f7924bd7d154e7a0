#include "strata/io/buffer_pool.h"

#include <algorithm>
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

// Member order matters for destruction: the registration goes before the arena.
struct PoolState {
  AlignedBuffer arena;
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
  STRATA_ASSIGN_OR_RETURN(state->arena, AlignedBuffer::allocate(round_up(options.budget_bytes, options.alignment),
                                                                options.alignment));
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
