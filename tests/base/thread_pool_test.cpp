#include "strata/base/thread_pool.h"

#include <atomic>
#include <numeric>
#include <set>

#include <gtest/gtest.h>

namespace strata {
namespace {

TEST(ThreadPool, ParallelForCoversEveryIndexExactlyOnce) {
  for (std::size_t threads : {1u, 2u, 3u, 8u}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (std::size_t n : {0ul, 1ul, 15ul, 4096ul, 100'003ul}) {
      std::vector<std::atomic<int>> hits(n);
      pool.parallel_for(n, 16, [&](std::size_t b, std::size_t e) {
        for (std::size_t i = b; i < e; ++i) hits[i].fetch_add(1);
      }, /*min_block=*/64);
      for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
    }
  }
}

TEST(ThreadPool, BlockEdgesAreAlignedAndContiguous) {
  ThreadPool pool(4);
  std::mutex mu;
  std::vector<std::pair<std::size_t, std::size_t>> blocks;
  pool.parallel_for(100'000, 16, [&](std::size_t b, std::size_t e) {
    std::lock_guard lock(mu);
    blocks.emplace_back(b, e);
  }, 1);
  std::sort(blocks.begin(), blocks.end());
  ASSERT_EQ(blocks.size(), 4u);
  EXPECT_EQ(blocks.front().first, 0u);
  EXPECT_EQ(blocks.back().second, 100'000u);
  for (std::size_t i = 1; i < blocks.size(); ++i) {
    EXPECT_EQ(blocks[i].first, blocks[i - 1].second);
    EXPECT_EQ(blocks[i].first % 16, 0u);
  }
}

TEST(ThreadPool, UsesSeveralThreads) {
  ThreadPool pool(4);
  std::mutex mu;
  std::set<std::thread::id> ids;
  std::atomic<int> arrived{0};
  pool.parallel_for(4, 1, [&](std::size_t, std::size_t) {
    // Hold every block until all four have started, so each must be on its own thread.
    arrived.fetch_add(1);
    while (arrived.load() < 4) std::this_thread::yield();
    std::lock_guard lock(mu);
    ids.insert(std::this_thread::get_id());
  }, 1);
  EXPECT_EQ(ids.size(), 4u);
}

TEST(ThreadPool, SubmitReturnsResults) {
  ThreadPool pool(3);
  std::vector<std::future<int>> futs;
  for (int i = 0; i < 100; ++i) futs.push_back(pool.submit([i] { return i * i; }));
  int sum = 0;
  for (auto& f : futs) sum += f.get();
  int want = 0;
  for (int i = 0; i < 100; ++i) want += i * i;
  EXPECT_EQ(sum, want);
}

TEST(ThreadPool, DestructorRunsQueuedJobs) {
  std::atomic<int> done{0};
  {
    ThreadPool pool(2);
    for (int i = 0; i < 50; ++i) (void)pool.submit([&] { done.fetch_add(1); });
  }
  EXPECT_EQ(done.load(), 50);
}

}  // namespace
}  // namespace strata
