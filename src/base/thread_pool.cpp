#include "strata/base/thread_pool.h"

#include <algorithm>
#include <cassert>

namespace strata {

std::size_t ThreadPool::default_threads() {
  return std::max<std::size_t>(1, std::thread::hardware_concurrency());
}

ThreadPool::ThreadPool(std::size_t n_threads) {
  if (n_threads == 0) n_threads = default_threads();
  // The caller takes part in parallel_for, so n threads need n-1 workers.
  workers_.reserve(n_threads - 1);
  for (std::size_t i = 0; i + 1 < n_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::enqueue(std::function<void()> job) {
  if (workers_.empty()) {  // a pool of one runs everything on the caller
    job();
    return;
  }
  {
    std::lock_guard lock(mu_);
    queue_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void ThreadPool::worker_loop() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and every queued job has run
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    job();
  }
}

void ThreadPool::parallel_for(std::size_t n, std::size_t align,
                              const std::function<void(std::size_t, std::size_t)>& fn,
                              std::size_t min_block) {
  if (n == 0) return;
  align = std::max<std::size_t>(align, 1);
  const std::size_t max_blocks = std::max<std::size_t>(1, n / std::max<std::size_t>(min_block, 1));
  const std::size_t blocks = std::min(size(), max_blocks);
  if (blocks == 1) {
    fn(0, n);
    return;
  }
  // Block b covers [edge(b), edge(b+1)); inner edges are rounded down to `align`.
  auto edge = [&](std::size_t b) {
    if (b == blocks) return n;
    std::size_t e = n / blocks * b + std::min(b, n % blocks);
    return e / align * align;
  };
  // `remaining` is only touched under done_mu, and the decrement is each job's last
  // access to this frame: the caller cannot return (and destroy the frame) before the
  // last job has released the lock.
  std::size_t remaining = blocks - 1;
  std::mutex done_mu;
  std::condition_variable done_cv;
  for (std::size_t b = 1; b < blocks; ++b) {
    enqueue([&, b] {
      const std::size_t lo = edge(b), hi = edge(b + 1);
      if (lo < hi) fn(lo, hi);
      std::lock_guard lock(done_mu);
      if (--remaining == 0) done_cv.notify_one();
    });
  }
  if (edge(1) > 0) fn(0, edge(1));
  std::unique_lock lock(done_mu);
  done_cv.wait(lock, [&] { return remaining == 0; });
}

}  // namespace strata
