// A small fixed pool of worker threads.
//
//   strata::ThreadPool pool(4);
//   pool.parallel_for(n, /*align=*/16, [&](std::size_t begin, std::size_t end) {
//     kernel(x + begin, end - begin);
//   });
//   auto done = pool.submit([] { return write_shard(); });  // std::future<Status>
//
// parallel_for splits [0, n) into one contiguous block per thread (the caller runs one
// block itself), with block edges rounded to `align` elements so that two threads never
// write the same cache line. Contiguous blocks keep each thread streaming through its
// own memory, which is what the memory-bound optimizer kernels need.
//
// Tasks must not throw: exceptions do not cross threads in strata (DESIGN §4). submit()
// does carry one through its future, as std::packaged_task does, for safety only.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace strata {

class ThreadPool {
 public:
  // n_threads == 0 means one per core (std::thread::hardware_concurrency()).
  explicit ThreadPool(std::size_t n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Threads that take part in parallel_for: the workers plus the calling thread.
  std::size_t size() const { return workers_.size() + 1; }

  template <class F>
  auto submit(F&& fn) -> std::future<std::invoke_result_t<F>> {
    using R = std::invoke_result_t<F>;
    auto task = std::make_shared<std::packaged_task<R()>>(std::forward<F>(fn));
    std::future<R> fut = task->get_future();
    enqueue([task] { (*task)(); });
    return fut;
  }

  // Runs fn(begin, end) over a partition of [0, n) and returns when all blocks are done.
  // Blocks smaller than min_block elements are merged, so tiny ranges run inline.
  void parallel_for(std::size_t n, std::size_t align,
                    const std::function<void(std::size_t, std::size_t)>& fn,
                    std::size_t min_block = 4096);

  // Hardware threads, at least 1.
  static std::size_t default_threads();

 private:
  void enqueue(std::function<void()> job);
  void worker_loop();

  std::vector<std::thread> workers_;
  std::deque<std::function<void()>> queue_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
};

}  // namespace strata
