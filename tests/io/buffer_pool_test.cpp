// BufferPool: the budget is a hard bound, acquire waits and then fails clearly,
// placement rotates through the arena, and buffers are aligned and RAII.
#include "strata/io/buffer_pool.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <set>
#include <thread>

#include "strata/io/file_engine.h"

namespace strata::io {
namespace {

using namespace std::chrono_literals;

BufferPool make_pool(std::size_t budget, std::chrono::milliseconds timeout = 200ms) {
  BufferPoolOptions o;
  o.budget_bytes = budget;
  o.acquire_timeout = timeout;
  auto p = BufferPool::create(o);
  EXPECT_TRUE(p.has_value()) << p.error();
  return std::move(*p);
}

TEST(BufferPool, BuffersAreAlignedAndRoundedUp) {
  BufferPool pool = make_pool(1 << 20);
  auto a = pool.acquire(1);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a->data()) % 4096, 0u);
  EXPECT_EQ(a->size(), 1u);
  EXPECT_EQ(a->capacity(), 4096u);
  auto b = pool.acquire(5000);
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->capacity(), 8192u);
  EXPECT_EQ(pool.stats().in_use_bytes, 12288u);
  EXPECT_EQ(pool.stats().buffers_in_use, 2u);
  a->reset();
  EXPECT_EQ(pool.stats().in_use_bytes, 8192u);
  auto empty = pool.acquire(0);
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ(empty->size(), 0u);
}

TEST(BufferPool, RequestOverBudgetFailsAtOnce) {
  BufferPool pool = make_pool(1 << 20, 10s);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = pool.acquire((1 << 20) + 1);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::kResourceExhausted);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
}

TEST(BufferPool, SpentBudgetWaitsThenFailsWithContext) {
  BufferPool pool = make_pool(64 << 10, 100ms);
  auto a = pool.acquire(48 << 10);
  ASSERT_TRUE(a.has_value());
  const auto t0 = std::chrono::steady_clock::now();
  auto b = pool.acquire(32 << 10);
  const auto waited = std::chrono::steady_clock::now() - t0;
  ASSERT_FALSE(b.has_value());
  EXPECT_EQ(b.error().code(), ErrorCode::kResourceExhausted);
  EXPECT_GE(waited, 100ms);
  EXPECT_NE(b.error().message().find("budget 64.0 KiB"), std::string::npos) << b.error();
  EXPECT_NE(b.error().message().find("in use 48.0 KiB"), std::string::npos) << b.error();
  EXPECT_EQ(pool.stats().timeouts, 1u);
  EXPECT_FALSE(pool.try_acquire(32 << 10).has_value());
  EXPECT_TRUE(pool.try_acquire(16 << 10).has_value());  // what is left still works
}

TEST(BufferPool, AcquireWakesWhenAnotherThreadReleases) {
  BufferPool pool = make_pool(64 << 10, 5s);
  auto a = pool.acquire(64 << 10);
  ASSERT_TRUE(a.has_value());
  std::thread releaser([&] {
    std::this_thread::sleep_for(50ms);
    a->reset();
  });
  auto b = pool.acquire(40 << 10);
  releaser.join();
  ASSERT_TRUE(b.has_value()) << b.error();
  EXPECT_EQ(pool.stats().waits, 1u);
}

TEST(BufferPool, PlacementRotatesThroughTheArena) {
  // Acquire-release in turn: lowest-address-first would hand out the same range every
  // time; next-fit walks the whole arena (Note [rotating placement]).
  BufferPool pool = make_pool(16 << 20);
  std::set<std::byte*> seen;
  for (int i = 0; i < 32; ++i) {
    auto b = pool.acquire(1 << 20);
    ASSERT_TRUE(b.has_value());
    seen.insert(b->data());
  }
  EXPECT_EQ(seen.size(), 16u);
}

TEST(BufferPool, FreedRangesCoalesce) {
  BufferPool pool = make_pool(64 << 10);
  std::vector<PooledBuffer> bufs;
  for (int i = 0; i < 16; ++i) bufs.push_back(std::move(*pool.acquire(4096)));
  EXPECT_EQ(pool.stats().largest_free_bytes, 0u);
  for (int i = 0; i < 16; i += 2) bufs[i].reset();
  EXPECT_EQ(pool.stats().largest_free_bytes, 4096u);
  EXPECT_FALSE(pool.try_acquire(8192).has_value());  // fragmented: no 8 KiB range
  for (int i = 1; i < 16; i += 2) bufs[i].reset();
  EXPECT_EQ(pool.stats().largest_free_bytes, 64u << 10);
  EXPECT_TRUE(pool.try_acquire(64 << 10).has_value());
}

TEST(BufferPool, ManyThreadsNeverExceedTheBudget) {
  BufferPool pool = make_pool(1 << 20, 10s);
  std::atomic<int> failures{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        auto b = pool.acquire(static_cast<std::size_t>(4096 * (1 + (i * 7 + t) % 60)));
        if (!b) {
          ++failures;
          continue;
        }
        std::memset(b->data(), t, b->size());
        if (pool.stats().in_use_bytes > pool.budget()) ++failures;
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(pool.stats().in_use_bytes, 0u);
  EXPECT_LE(pool.stats().peak_bytes, pool.budget());
}

TEST(BufferPool, BuffersOutliveThePoolHandle) {
  PooledBuffer keep;
  {
    BufferPool pool = make_pool(1 << 20);
    keep = std::move(*pool.acquire(4096));
  }
  std::memset(keep.data(), 1, keep.size());  // the arena lives while a buffer does
  keep.reset();
}

TEST(BufferPool, ArenaIsOnHugePagesWhereTheKernelAllowsIt) {
  std::string thp;
  if (FILE* f = std::fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r")) {
    char buf[128] = {};
    if (std::fgets(buf, sizeof buf, f) != nullptr) thp = buf;
    std::fclose(f);
  }
  BufferPool pool = make_pool(4 << 20);
  auto b = pool.acquire(4096);
  ASSERT_TRUE(b.has_value());
  if (thp.empty() || thp.find("[never]") != std::string::npos) {
    GTEST_SKIP() << "transparent huge pages are off here: '" << thp << "'";
  }
  EXPECT_TRUE(pool.stats().huge_pages);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b->data()) % (2 << 20), 0u);  // the arena starts on a huge page
  BufferPoolOptions o;
  o.budget_bytes = 1 << 20;
  o.huge_pages = false;
  auto small = BufferPool::create(o);
  ASSERT_TRUE(small.has_value());
  EXPECT_FALSE(small->stats().huge_pages);
  EXPECT_EQ(small->budget(), 1u << 20);  // rounding for huge pages never grows the budget
}

struct PinLog {
  int pins = 0, unpins = 0;
  std::size_t bytes = 0;
};

TEST(BufferPool, PinHooksRunOnceForTheArena) {
  PinLog log;
  BufferPoolOptions o;
  o.budget_bytes = 1 << 20;
  o.pin.ctx = &log;
  o.pin.pin = [](void* ctx, std::byte*, std::size_t n) -> Status {
    static_cast<PinLog*>(ctx)->pins++;
    static_cast<PinLog*>(ctx)->bytes = n;
    return ok();
  };
  o.pin.unpin = [](void* ctx, std::byte*, std::size_t) { static_cast<PinLog*>(ctx)->unpins++; };
  {
    auto pool = BufferPool::create(o);
    ASSERT_TRUE(pool.has_value());
    EXPECT_TRUE(pool->stats().pinned);
    auto b = pool->acquire(4096);
    EXPECT_EQ(log.pins, 1);
  }
  EXPECT_EQ(log.unpins, 1);
  EXPECT_EQ(log.bytes, 1u << 20);
  o.pin.pin = [](void*, std::byte*, std::size_t) -> Status {
    return make_error(ErrorCode::kUnavailable, "cudaHostRegister failed");
  };
  auto bad = BufferPool::create(o);
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().message().find("pinning"), std::string::npos);
}

TEST(BufferPool, RegisteredWithTheRingWhenAnEngineIsGiven) {
  for (Backend b : {Backend::kUring, Backend::kThreadPool}) {
    EngineOptions eo;
    eo.backend = b;
    auto engine = FileEngine::create(eo);
    ASSERT_TRUE(engine.has_value());
    BufferPoolOptions o;
    o.budget_bytes = 2 << 20;
    o.engine = &*engine;
    auto pool = BufferPool::create(o);
    ASSERT_TRUE(pool.has_value()) << pool.error();
    EXPECT_EQ(pool->stats().registered, b == Backend::kUring);
  }
}

}  // namespace
}  // namespace strata::io
