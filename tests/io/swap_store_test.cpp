// SwapStore: round trips on both backends, host-memory records, per-key order,
// concurrency, reservation rules, lifecycle (cleanup, lock, stale files).
#include "strata/io/swap_store.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "io/io_test_util.h"
#include "strata/io/fault_injection.h"

namespace strata::io {
namespace {

using strata::testing::fill_pattern;
using strata::testing::kMaxTestBytes;
using strata::testing::make_buffer;
using strata::testing::swap_key;
using strata::testing::random_size;
using strata::testing::run_in_child;
using strata::testing::ScratchDir;
namespace fs = std::filesystem;

SwapStoreOptions options_for(const ScratchDir& dir, Backend backend = Backend::kAuto, std::string job = "test") {
  SwapStoreOptions o;
  o.nvme_path = dir.path();
  o.job_name = std::move(job);
  o.backend = backend;
  o.min_io_bytes = 0;  // everything on disk unless a test says otherwise
  o.pool_bytes = 2 * kMaxTestBytes + (16 << 20);  // room for two bounce buffers of the largest record
  o.aio.block_size = 1 << 20;
  o.aio.queue_depth = 16;
  return o;
}

std::unique_ptr<SwapStore> open_store(const SwapStoreOptions& o) {
  auto s = SwapStore::open(o);
  EXPECT_TRUE(s.has_value()) << s.error();
  return s ? std::move(*s) : nullptr;
}

class SwapStoreBackends : public ::testing::TestWithParam<Backend> {
 protected:
  ScratchDir dir_;
};

// Random sizes (1 byte to kMaxTestBytes), aligned and unaligned spans, all puts in
// flight at once, then gets in flight (unaligned ones in a window, since their bounce
// buffers are held until wait()), byte-exact; then a second generation.
TEST_P(SwapStoreBackends, RandomSizeRoundTrips) {
  auto store = open_store(options_for(dir_, GetParam()));
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->engine().backend(), GetParam());
  std::mt19937_64 rng(1234);
  constexpr int kRecords = 28;
  std::vector<std::size_t> sizes;
  std::vector<SwapReservation> res;
  for (int i = 0; i < kRecords; ++i) {
    sizes.push_back(i == 0 ? 1 : i == 1 ? kMaxTestBytes : random_size(rng, 1, kMaxTestBytes));
    res.push_back({swap_key(i, i % 3, i % 2 ? SwapKind::kParams : SwapKind::kOptimizer), sizes.back()});
  }
  ASSERT_TRUE(store->reserve(res).has_value());
  for (int gen = 1; gen <= 2; ++gen) {
    std::vector<AlignedBuffer> src, dst;
    std::vector<SwapHandle> puts;
    for (int i = 0; i < kRecords; ++i) {
      // Odd records use spans that start one byte into the buffer: the copy path.
      const std::size_t shift = i % 2;
      src.push_back(make_buffer(sizes[i] + shift, gen * 100 + i));
      dst.push_back(make_buffer(sizes[i] + shift, 0, false));
      puts.push_back(store->put_async(res[i].key, src[i].span().subspan(shift, sizes[i])));
    }
    for (auto& h : puts) ASSERT_TRUE(h.wait().has_value()) << h.wait().error();
    std::vector<SwapHandle> gets(kRecords);
    std::size_t window = 0;
    for (int i = 0; i < kRecords; ++i) {
      const std::size_t shift = i % 2;
      if (shift != 0 && window + sizes[i] > store->pool().budget() / 2) {
        for (int j = 0; j < i; ++j) ASSERT_TRUE(gets[j].wait().has_value()) << gets[j].wait().error();
        window = 0;
      }
      window += shift * sizes[i];
      gets[i] = store->get_async(res[i].key, dst[i].span().subspan(shift, sizes[i]));
    }
    for (int i = 0; i < kRecords; ++i) {
      const std::size_t shift = i % 2;
      ASSERT_TRUE(gets[i].wait().has_value()) << gets[i].wait().error();
      ASSERT_EQ(std::memcmp(src[i].data() + shift, dst[i].data() + shift, sizes[i]), 0)
          << "record " << i << " size " << sizes[i];
      auto info = store->info(res[i].key);
      ASSERT_TRUE(info.has_value());
      EXPECT_EQ(info->generation, static_cast<std::uint64_t>(gen));
      EXPECT_EQ(info->length, sizes[i]);
    }
  }
  const auto st = store->stats();
  EXPECT_EQ(st.disk_records, static_cast<std::size_t>(kRecords));
  EXPECT_EQ(st.verify_failures, 0u);
  std::uint64_t payload = 0;
  for (std::size_t n : sizes) payload += n;
  EXPECT_EQ(st.bytes_written, 2 * payload);
  EXPECT_EQ(st.bytes_read, 2 * payload);
  EXPECT_EQ(st.puts, 2u * kRecords);
  EXPECT_EQ(st.gets, 2u * kRecords);
  EXPECT_EQ(store->pool().stats().in_use_bytes, 0u);  // every staging buffer came back
}

// A put may be shorter than its reservation; the slot keeps its place.
TEST_P(SwapStoreBackends, PutsShorterThanTheReservation) {
  auto store = open_store(options_for(dir_, GetParam()));
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->reserve(swap_key(1), 3 << 20).has_value());
  for (std::size_t n : {std::size_t{3} << 20, std::size_t{5000}, std::size_t{0}, std::size_t{1} << 20}) {
    AlignedBuffer src = make_buffer(std::max<std::size_t>(n, 1), n), dst = make_buffer(std::max<std::size_t>(n, 1));
    ASSERT_TRUE(store->put(swap_key(1), src.span().first(n)).has_value());
    ASSERT_TRUE(store->get(swap_key(1), dst.span().first(n)).has_value());
    EXPECT_EQ(std::memcmp(src.data(), dst.data(), n), 0);
  }
}

// Note [pieced transfer]: an unaligned record 16x the whole pool (64 MiB in release) moves
// through 1 MiB bounce buffers; a corrupted piece fails the checksum; a failed piece
// write marks the record lost. Without the pieces, the put needed one bounce buffer as
// large as the record and failed.
TEST_P(SwapStoreBackends, UnalignedRecordsLargerThanThePoolMoveInPieces) {
  SwapStoreOptions o = options_for(dir_, GetParam());
  o.pool_bytes = 4 << 20;
  o.pool_timeout = std::chrono::milliseconds(2000);
  auto faults = std::make_shared<FaultInjector>();
  o.faults = faults;
  auto store = open_store(o);
  ASSERT_NE(store, nullptr);
  constexpr std::size_t n = kMaxTestBytes + 123;  // a partial last piece
  ASSERT_TRUE(store->reserve(swap_key(9), n).has_value());
  AlignedBuffer a = make_buffer(n + 1, 5), b = make_buffer(n + 1, 6), r = make_buffer(n + 1, 0, false);
  const auto unaligned = [](AlignedBuffer& buf) { return buf.span().subspan(1, n); };
  for (AlignedBuffer* src : {&a, &b}) {
    ASSERT_TRUE(store->put(swap_key(9), unaligned(*src)).has_value());
    auto got = store->get(swap_key(9), unaligned(r));
    ASSERT_TRUE(got.has_value()) << got.error();
    EXPECT_EQ(std::memcmp(src->data() + 1, r.data() + 1, n), 0);
  }
  EXPECT_EQ(store->info(swap_key(9))->generation, 2u);
  // An aligned get of the same record reads what the pieces wrote.
  AlignedBuffer whole = make_buffer(n, 0, false);
  ASSERT_TRUE(store->get(swap_key(9), whole.span()).has_value());
  EXPECT_EQ(std::memcmp(b.data() + 1, whole.data(), n), 0);
  faults->corrupt_next_read(17);  // the header block or a piece: either is caught
  auto bad = store->get(swap_key(9), unaligned(r));
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), ErrorCode::kDataLoss) << bad.error();
  ASSERT_TRUE(store->get(swap_key(9), unaligned(r)).has_value());  // the disk was never wrong
  faults->fail_next(EIO, 1, FaultTarget::kWrite, /*skip=*/2);
  EXPECT_FALSE(store->put(swap_key(9), unaligned(a)).has_value());
  auto lost = store->get(swap_key(9), unaligned(r));
  ASSERT_FALSE(lost.has_value());
  EXPECT_NE(lost.error().to_string().find("was lost"), std::string::npos) << lost.error();
}

INSTANTIATE_TEST_SUITE_P(Backends, SwapStoreBackends, ::testing::Values(Backend::kUring, Backend::kThreadPool),
                         [](const ::testing::TestParamInfo<Backend>& p) {
                           return std::string(p.param == Backend::kUring ? "uring" : "threads");
                         });

TEST(SwapStore, SmallRecordsStayInHostMemory) {
  ScratchDir dir;
  SwapStoreOptions o = options_for(dir);
  o.min_io_bytes = 1 << 20;
  auto store = open_store(o);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->reserve({{swap_key(1), 100'000}, {swap_key(2), 2 << 20}}).has_value());
  EXPECT_FALSE(store->info(swap_key(1))->on_disk);
  EXPECT_TRUE(store->info(swap_key(2))->on_disk);
  EXPECT_EQ(fs::file_size(store->path(SwapKind::kOptimizer)), 4096u + 4096u + (2u << 20));
  std::vector<std::byte> src(100'000), dst(100'000);
  fill_pattern(src, 77);
  ASSERT_TRUE(store->put(swap_key(1), src).has_value());
  ASSERT_TRUE(store->get(swap_key(1), dst).has_value());
  EXPECT_EQ(src, dst);
  EXPECT_EQ(store->stats().host_records, 1u);
  EXPECT_EQ(store->stats().reserved_host_bytes, 100'000u);
}

TEST(SwapStore, OpsOnOneKeyTakeEffectInOrder) {
  ScratchDir dir;
  auto store = open_store(options_for(dir));
  ASSERT_NE(store, nullptr);
  const std::size_t n = std::min<std::size_t>(kMaxTestBytes, 8 << 20);
  ASSERT_TRUE(store->reserve(swap_key(5), n).has_value());
  AlignedBuffer a = make_buffer(n, 1), b = make_buffer(n, 2), c = make_buffer(n, 3);
  AlignedBuffer r1 = make_buffer(n), r2 = make_buffer(n);
  SwapHandle pa = store->put_async(swap_key(5), a.span());
  SwapHandle g1 = store->get_async(swap_key(5), r1.span());  // must see a
  SwapHandle pb = store->put_async(swap_key(5), b.span());   // waits for the get's I/O
  SwapHandle pc = store->put_async(swap_key(5), c.span());
  SwapHandle g2 = store->get_async(swap_key(5), r2.span());  // must see c
  ASSERT_TRUE(pa.wait().has_value());
  ASSERT_TRUE(g1.wait().has_value()) << g1.wait().error();
  ASSERT_TRUE(pb.wait().has_value());
  ASSERT_TRUE(pc.wait().has_value());
  ASSERT_TRUE(g2.wait().has_value()) << g2.wait().error();
  EXPECT_EQ(std::memcmp(a.data(), r1.data(), n), 0);
  EXPECT_EQ(std::memcmp(c.data(), r2.data(), n), 0);
  EXPECT_EQ(store->info(swap_key(5))->generation, 3u);
}

TEST(SwapStore, ConcurrentPutsAndGetsFromSeveralThreads) {
  ScratchDir dir;
  auto store = open_store(options_for(dir));
  ASSERT_NE(store, nullptr);
  constexpr int kThreads = 4, kKeysPerThread = 3, kRounds = 6;
  const std::size_t n = std::min<std::size_t>(kMaxTestBytes / 2, 2 << 20);
  std::vector<SwapReservation> res;
  for (int t = 0; t < kThreads; ++t)
    for (int k = 0; k < kKeysPerThread; ++k) res.push_back({swap_key(t * 100 + k, t), n});
  res.push_back({swap_key(999), n});  // shared: written once, read by everyone
  ASSERT_TRUE(store->reserve(res).has_value());
  AlignedBuffer shared = make_buffer(n, 999);
  ASSERT_TRUE(store->put(swap_key(999), shared.span()).has_value());
  std::atomic<int> errors{0}, mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      AlignedBuffer in = make_buffer(n), mine = make_buffer(n);
      for (int round = 0; round < kRounds; ++round) {
        std::vector<AlignedBuffer> srcs;
        std::vector<SwapHandle> hs;
        for (int k = 0; k < kKeysPerThread; ++k) {
          srcs.push_back(make_buffer(n, t * 1000 + round * 10 + k));
          hs.push_back(store->put_async(swap_key(t * 100 + k, t), srcs.back().span()));
        }
        SwapHandle g = store->get_async(swap_key(999), in.span());
        if (!g.wait()) ++errors;
        if (std::memcmp(in.data(), shared.data(), n) != 0) ++mismatches;
        for (auto& h : hs)
          if (!h.wait()) ++errors;
        for (int k = 0; k < kKeysPerThread; ++k) {
          if (!store->get(swap_key(t * 100 + k, t), mine.span())) ++errors;
          if (std::memcmp(mine.data(), srcs[k].data(), n) != 0) ++mismatches;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(store->stats().puts, 1u + kThreads * kKeysPerThread * kRounds);
}

TEST(SwapStore, ReservationAndArgumentErrors) {
  ScratchDir dir;
  SwapStoreOptions o = options_for(dir);
  o.nvme_budget_bytes = 64 << 20;
  auto store = open_store(o);
  ASSERT_NE(store, nullptr);
  AlignedBuffer buf = make_buffer(2 << 20);
  EXPECT_EQ(store->put(swap_key(1), buf.span()).error().code(), ErrorCode::kNotFound);
  ASSERT_TRUE(store->reserve(swap_key(1), 1 << 20).has_value());
  EXPECT_TRUE(store->reserve(swap_key(1), 1 << 20).has_value());  // same size: no-op
  EXPECT_EQ(store->reserve(swap_key(1), 2 << 20).error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(store->reserve({{swap_key(2), 10}, {swap_key(2), 20}}).error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(store->reserve(swap_key(3), 0).error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(store->get(swap_key(1), buf.span().first(1 << 20)).error().code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(store->put(swap_key(1), buf.span()).error().code(), ErrorCode::kInvalidArgument);  // over capacity
  ASSERT_TRUE(store->put(swap_key(1), buf.span().first(1 << 20)).has_value());
  EXPECT_EQ(store->get(swap_key(1), buf.span().first(4096)).error().code(), ErrorCode::kInvalidArgument);
  auto over = store->reserve(swap_key(4), 100 << 20);
  ASSERT_FALSE(over.has_value());
  EXPECT_EQ(over.error().code(), ErrorCode::kResourceExhausted);
  EXPECT_TRUE(store->get(swap_key(1), buf.span().first(1 << 20)).has_value());  // still fine
}

TEST(SwapStore, CleanShutdownRemovesFilesAndDirectories) {
  ScratchDir dir;
  auto r0 = open_store(options_for(dir, Backend::kAuto, "job/with spaces"));
  SwapStoreOptions o1 = options_for(dir, Backend::kAuto, "job/with spaces");
  o1.rank = 1;
  auto r1 = open_store(o1);
  ASSERT_NE(r0, nullptr);
  ASSERT_NE(r1, nullptr);
  EXPECT_EQ(r0->rank_dir(), dir.path() + "/strata-job_with_spaces/rank0");
  EXPECT_EQ(r1->rank_dir(), dir.path() + "/strata-job_with_spaces/rank1");
  ASSERT_TRUE(r0->reserve(swap_key(1), 1 << 20).has_value());
  AlignedBuffer b = make_buffer(1 << 20, 1);
  ASSERT_TRUE(r0->put(swap_key(1), b.span()).has_value());
  EXPECT_TRUE(fs::exists(r0->path(SwapKind::kParams)));
  EXPECT_TRUE(fs::exists(r0->path(SwapKind::kOptimizer)));
  EXPECT_TRUE(r0->stale_files().empty());
  ASSERT_TRUE(r0->close().has_value());
  EXPECT_FALSE(fs::exists(dir.path() + "/strata-job_with_spaces/rank0"));
  EXPECT_TRUE(fs::exists(dir.path() + "/strata-job_with_spaces"));  // rank 1 still there
  EXPECT_EQ(r0->put(swap_key(1), b.span()).error().code(), ErrorCode::kFailedPrecondition);
  r1.reset();  // the destructor closes too
  EXPECT_FALSE(fs::exists(dir.path() + "/strata-job_with_spaces"));
}

TEST(SwapStore, SecondOpenOfALiveDirectoryFails) {
  ScratchDir dir;
  auto a = open_store(options_for(dir));
  ASSERT_NE(a, nullptr);
  auto b = SwapStore::open(options_for(dir));
  ASSERT_FALSE(b.has_value());
  EXPECT_EQ(b.error().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(b.error().message().find(fmt::format("pid {}", ::getpid())), std::string::npos) << b.error();
  EXPECT_TRUE(fs::exists(a->path(SwapKind::kOptimizer)));  // the failed open removed nothing
  a.reset();
  auto c = open_store(options_for(dir));
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(c->stale_files().empty());
}

// Note [default job name]: without a job name, stores alive at once in one process (two
// engines, a GAN's) each get a directory of their own; one opened after the others
// closed takes "pid<pid>" again. Before, the second failed as if another run held it.
TEST(SwapStore, StoresAliveAtOnceInOneProcessGetDirectoriesOfTheirOwn) {
  ScratchDir dir;
  const std::string pid = fmt::format("{}/strata-pid{}", dir.path(), ::getpid());
  auto a = open_store(options_for(dir, Backend::kAuto, ""));
  auto b = open_store(options_for(dir, Backend::kAuto, ""));
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a->rank_dir(), pid + "/rank0");
  EXPECT_EQ(b->rank_dir(), pid + ".2/rank0");
  AlignedBuffer x = make_buffer(1 << 20, 1), y = make_buffer(1 << 20, 2), got = make_buffer(1 << 20, 0);
  ASSERT_TRUE(a->reserve(swap_key(1), 1 << 20).has_value());
  ASSERT_TRUE(b->reserve(swap_key(1), 1 << 20).has_value());
  ASSERT_TRUE(a->put(swap_key(1), x.span()).has_value());
  ASSERT_TRUE(b->put(swap_key(1), y.span()).has_value());
  ASSERT_TRUE(a->get(swap_key(1), got.span()).has_value());
  EXPECT_EQ(std::memcmp(got.data(), x.data(), 1 << 20), 0);
  ASSERT_TRUE(b->get(swap_key(1), got.span()).has_value());
  EXPECT_EQ(std::memcmp(got.data(), y.data(), 1 << 20), 0);
  a.reset();
  auto c = open_store(options_for(dir, Backend::kAuto, ""));  // the lowest free number
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->rank_dir(), pid + "/rank0");
  EXPECT_TRUE(c->stale_files().empty());
}

// A run that dies without closing leaves its files and lock behind; the next run
// reports them, deletes them, and starts clean: nothing of the old run is readable.
TEST(SwapStore, StaleFilesFromACrashedRunAreReportedNotTrusted) {
  ScratchDir dir;
  const std::string crashed = run_in_child([&]() -> std::string {
    auto s = SwapStore::open(options_for(dir, Backend::kAuto, "crashy"));
    if (!s) return s.error().to_string();
    if (auto st = (*s)->reserve(swap_key(1), 1 << 20); !st) return st.error().to_string();
    AlignedBuffer b = make_buffer(1 << 20, 1);
    if (auto st = (*s)->put(swap_key(1), b.span()); !st) return st.error().to_string();
    std::fflush(nullptr);
    ::_exit(0);  // a crash, as far as the store can tell: no close(), no destructors
  });
  ASSERT_EQ(crashed, "");
  const std::string rank_dir = dir.path() + "/strata-crashy/rank0";
  ASSERT_TRUE(fs::exists(rank_dir + "/optimizer.swp"));
  auto store = open_store(options_for(dir, Backend::kAuto, "crashy"));
  ASSERT_NE(store, nullptr);
  const auto& stale = store->stale_files();
  ASSERT_EQ(stale.size(), 2u);
  for (const StaleFile& s : stale) {
    EXPECT_TRUE(s.removed);
    EXPECT_NE(s.owner.find("written by pid"), std::string::npos) << s.owner;
    EXPECT_EQ(s.owner.find(fmt::format("pid {} ", ::getpid())), std::string::npos) << s.owner;
  }
  EXPECT_EQ(store->info(swap_key(1)).error().code(), ErrorCode::kNotFound);
  ASSERT_TRUE(store->reserve(swap_key(1), 1 << 20).has_value());
  AlignedBuffer b = make_buffer(1 << 20, 5), r = make_buffer(1 << 20);
  EXPECT_EQ(store->get(swap_key(1), r.span()).error().code(), ErrorCode::kFailedPrecondition);  // fresh
  ASSERT_TRUE(store->put(swap_key(1), b.span()).has_value());
  ASSERT_TRUE(store->get(swap_key(1), r.span()).has_value());
  EXPECT_EQ(std::memcmp(b.data(), r.data(), b.size()), 0);
}

// What strata train's launcher does after its ranks exit: a crashed rank's directory
// is emptied and removed; a live store's is left alone.
TEST(SwapStore, RemoveAbandonedSwapTakesOnlyDeadRanksFiles) {
  ScratchDir dir;
  const std::string crashed = run_in_child([&]() -> std::string {
    auto s = SwapStore::open(options_for(dir, Backend::kAuto, "job"));
    if (!s) return s.error().to_string();
    if (auto st = (*s)->reserve(swap_key(1), 1 << 20); !st) return st.error().to_string();
    AlignedBuffer b = make_buffer(1 << 20, 1);
    if (auto st = (*s)->put(swap_key(1), b.span()); !st) return st.error().to_string();
    ::_exit(0);  // no destructors: its files and lock stay
  });
  ASSERT_EQ(crashed, "");
  SwapStoreOptions live = options_for(dir, Backend::kAuto, "job");
  live.rank = 1;
  auto alive = open_store(live);
  ASSERT_NE(alive, nullptr);
  const std::string job_dir = dir.path() + "/strata-job";
  ASSERT_TRUE(fs::exists(job_dir + "/rank0/optimizer.swp"));

  auto removed = remove_abandoned_swap(dir.path(), "job");
  ASSERT_TRUE(removed) << removed.error();
  EXPECT_EQ(removed->size(), 2u);  // rank 0's two swap files
  EXPECT_FALSE(fs::exists(job_dir + "/rank0"));
  EXPECT_TRUE(fs::exists(alive->path(SwapKind::kOptimizer)));  // the live rank keeps its files
  alive.reset();
  EXPECT_FALSE(fs::exists(job_dir));  // its clean close removed the rest
  auto none = remove_abandoned_swap(dir.path(), "job");
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
}

TEST(SwapStore, DroppedHandlesLeaveTheStoreConsistent) {
  ScratchDir dir;
  auto store = open_store(options_for(dir));
  ASSERT_NE(store, nullptr);
  const std::size_t n = 4 << 20;
  ASSERT_TRUE(store->reserve(swap_key(1), n).has_value());
  AlignedBuffer a = make_buffer(n, 1), r = make_buffer(n);
  store->put_async(swap_key(1), a.span());  // dropped at once: waits for its I/O
  {
    SwapHandle g = store->get_async(swap_key(1), r.span());
  }  // dropped unchecked
  ASSERT_TRUE(store->get(swap_key(1), r.span()).has_value());
  EXPECT_EQ(std::memcmp(a.data(), r.data(), n), 0);
  EXPECT_EQ(store->info(swap_key(1))->generation, 1u);
  EXPECT_EQ(store->pool().stats().in_use_bytes, 0u);
}

TEST(SwapStore, FromConfigTakesTheRelevantKeys) {
  Config cfg;
  cfg.aio.block_size = 256 << 10;
  cfg.aio.queue_depth = 32;
  cfg.strata.min_io_bytes = 12345;
  cfg.strata.job_name = "j";
  cfg.strata.nvme_budget = 1 << 30;
  SwapStoreOptions o = SwapStoreOptions::from_config(cfg, 3, "/nvme");
  EXPECT_EQ(o.aio, cfg.aio);
  EXPECT_EQ(o.min_io_bytes, 12345u);
  EXPECT_EQ(o.job_name, "j");
  EXPECT_EQ(o.rank, 3);
  EXPECT_EQ(o.nvme_path, "/nvme");
  EXPECT_EQ(o.nvme_budget_bytes, 1u << 30);
}

}  // namespace
}  // namespace strata::io
