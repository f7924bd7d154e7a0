// FileEngine on both backends: byte-exact round trips with many ops in flight, the aio
// knobs, retries, injected faults and lifetimes.
#include "strata/io/file_engine.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <thread>

#include "io/io_test_util.h"
#include "strata/io/fault_injection.h"

namespace strata::io {
namespace {

using strata::testing::fill_pattern;
using strata::testing::kMaxTestBytes;
using strata::testing::make_buffer;
using strata::testing::random_size;
using strata::testing::ScratchDir;

struct EngineParam {
  Backend backend;
  std::uint64_t block_size;
  int queue_depth;
  int workers;
  bool single_submit;
  bool overlap;
  std::string name;
};

class EngineTest : public ::testing::TestWithParam<EngineParam> {
 protected:
  FileEngine make_engine(std::shared_ptr<FaultInjector> faults = nullptr) {
    const EngineParam& p = GetParam();
    EngineOptions o;
    o.backend = p.backend;
    o.aio.block_size = p.block_size;
    o.aio.queue_depth = p.queue_depth;
    o.aio.intra_op_parallelism = p.workers;
    o.aio.single_submit = p.single_submit;
    o.aio.overlap_events = p.overlap;
    o.faults = std::move(faults);
    auto e = FileEngine::create(o);
    EXPECT_TRUE(e.has_value()) << e.error();
    EXPECT_EQ(e->backend(), p.backend);
    return std::move(*e);
  }
  ScratchDir dir_;
};

// Random sizes from 4 KiB to kMaxTestBytes at random aligned offsets, all in flight at
// once, through O_DIRECT; then read back, again all at once, and compare every byte.
TEST_P(EngineTest, DirectRoundTripsManyInFlight) {
  FileEngine engine = make_engine();
  auto f = engine.open(dir_.file("data"), {OpenMode::kTruncate});
  ASSERT_TRUE(f.has_value()) << f.error();
  ASSERT_TRUE(f->direct());
  std::mt19937_64 rng(42);
  struct Op {
    std::uint64_t offset;
    AlignedBuffer src, dst;
  };
  std::vector<Op> ops;
  std::uint64_t cursor = 0;
  for (int i = 0; i < 24; ++i) {
    const std::size_t bytes = round_up(random_size(rng, 4096, kMaxTestBytes), 4096);
    cursor += round_up(rng() % (8 << 20), 4096);  // random gaps: random offsets
    ops.push_back(Op{cursor, make_buffer(bytes, i + 1), make_buffer(bytes, 0, false)});
    cursor += bytes;
  }
  std::vector<IoHandle> writes;
  for (auto& op : ops) writes.push_back(engine.write(*f, op.offset, op.src.span()));
  for (auto& h : writes) ASSERT_TRUE(h.wait().has_value()) << h.wait().error();
  std::shuffle(ops.begin(), ops.end(), rng);
  std::vector<IoHandle> reads;
  for (auto& op : ops) reads.push_back(engine.read(*f, op.offset, op.dst.span()));
  for (std::size_t i = 0; i < ops.size(); ++i) {
    ASSERT_TRUE(reads[i].wait().has_value()) << reads[i].wait().error();
    EXPECT_EQ(std::memcmp(ops[i].src.data(), ops[i].dst.data(), ops[i].src.size()), 0) << "op " << i;
  }
}

// Without O_DIRECT any size and offset works: 1 byte to a few MiB at odd offsets.
TEST_P(EngineTest, BufferedRoundTripsAnySizeAndOffset) {
  FileEngine engine = make_engine();
  auto f = engine.open(dir_.file("buffered"), {OpenMode::kTruncate, /*direct=*/false});
  ASSERT_TRUE(f.has_value()) << f.error();
  std::mt19937_64 rng(7);
  struct Op {
    std::uint64_t offset;
    std::vector<std::byte> src, dst;
  };
  std::vector<Op> ops;
  std::uint64_t cursor = 0;
  for (int i = 0; i < 32; ++i) {
    const std::size_t bytes = random_size(rng, 1, std::min<std::size_t>(kMaxTestBytes, 3 << 20));
    cursor += rng() % 10007;
    Op op{cursor, std::vector<std::byte>(bytes), std::vector<std::byte>(bytes)};
    fill_pattern(op.src, 100 + i);
    cursor += bytes;
    ops.push_back(std::move(op));
  }
  std::vector<IoHandle> hs;
  for (auto& op : ops) hs.push_back(engine.write(*f, op.offset, op.src));
  for (auto& h : hs) ASSERT_TRUE(h.wait().has_value());
  hs.clear();
  for (auto& op : ops) hs.push_back(engine.read(*f, op.offset, op.dst));
  for (std::size_t i = 0; i < ops.size(); ++i) {
    ASSERT_TRUE(hs[i].wait().has_value()) << hs[i].wait().error();
    EXPECT_EQ(ops[i].src, ops[i].dst) << "op " << i << " size " << ops[i].src.size();
  }
}

TEST_P(EngineTest, VectoredOpMovesAllSegments) {
  FileEngine engine = make_engine();
  auto f = engine.open(dir_.file("vec"), {OpenMode::kTruncate});
  ASSERT_TRUE(f.has_value());
  AlignedBuffer a = make_buffer(4096, 1), b = make_buffer(3 << 20, 2), c = make_buffer(8192, 3);
  const IoSegment w[] = {{0, a.data(), a.size()}, {4096, b.data(), b.size()}, {(16 << 20), c.data(), c.size()}};
  ASSERT_TRUE(engine.writev(*f, w).wait().has_value());
  AlignedBuffer a2 = make_buffer(a.size(), 0, false), b2 = make_buffer(b.size(), 0, false),
                c2 = make_buffer(c.size(), 0, false);
  const IoSegment r[] = {{0, a2.data(), a2.size()}, {4096, b2.data(), b2.size()}, {(16 << 20), c2.data(), c2.size()}};
  IoHandle h = engine.readv(*f, r);
  EXPECT_EQ(h.bytes(), a.size() + b.size() + c.size());
  ASSERT_TRUE(h.wait().has_value());
  EXPECT_EQ(std::memcmp(a.data(), a2.data(), a.size()), 0);
  EXPECT_EQ(std::memcmp(b.data(), b2.data(), b.size()), 0);
  EXPECT_EQ(std::memcmp(c.data(), c2.data(), c.size()), 0);
}

TEST_P(EngineTest, ConcurrentSubmittersFromSeveralThreads) {
  FileEngine engine = make_engine();
  auto f = engine.open(dir_.file("mt"), {OpenMode::kTruncate});
  ASSERT_TRUE(f.has_value());
  constexpr int kThreads = 4, kOps = 12;
  const std::size_t region = std::min<std::size_t>(kMaxTestBytes / 4, 4 << 20);
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0}, errors{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      for (int i = 0; i < kOps; ++i) {
        const std::size_t bytes = round_up(random_size(rng, 4096, region), 4096);
        const std::uint64_t off = (static_cast<std::uint64_t>(t) * kOps + i) * region;
        AlignedBuffer src = make_buffer(bytes, t * 1000 + i), dst = make_buffer(bytes, 0, false);
        IoHandle w = engine.write(*f, off, src.span());
        if (!w.wait()) ++errors;
        IoHandle r = engine.read(*f, off, dst.span());
        if (!r.wait()) ++errors;
        if (std::memcmp(src.data(), dst.data(), bytes) != 0) ++mismatches;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
}

TEST_P(EngineTest, MisalignedDirectOpFailsWithContext) {
  FileEngine engine = make_engine();
  auto f = engine.open(dir_.file("align"), {OpenMode::kTruncate});
  ASSERT_TRUE(f.has_value());
  AlignedBuffer buf = make_buffer(8192);
  Status st = engine.write(*f, 100, buf.span().first(4096)).wait();
  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(st.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(st.error().context().offset, 100u);
  EXPECT_EQ(st.error().context().path, f->path());
  EXPECT_FALSE(engine.write(*f, 0, buf.span().subspan(1, 4096)).wait().has_value());
  EXPECT_FALSE(engine.write(*f, 0, buf.span().first(100)).wait().has_value());
  EXPECT_TRUE(engine.write(*f, 0, buf.span()).wait().has_value());  // still usable
}

TEST_P(EngineTest, InjectedEioMidTransferNamesThePiece) {
  auto faults = std::make_shared<FaultInjector>();
  FileEngine engine = make_engine(faults);
  auto f = engine.open(dir_.file("eio"), {OpenMode::kTruncate});
  ASSERT_TRUE(f.has_value());
  const std::size_t bytes = 16 * GetParam().block_size;
  AlignedBuffer src = make_buffer(bytes, 5), dst = make_buffer(bytes, 0, false);
  ASSERT_TRUE(engine.write(*f, 0, src.span()).wait().has_value());
  faults->fail_next(EIO, 1, FaultTarget::kRead, /*skip=*/5);
  Status st = engine.read(*f, 0, dst.span()).wait();
  ASSERT_FALSE(st.has_value());
  const Error& e = st.error();
  EXPECT_EQ(e.code(), ErrorCode::kIoError);
  EXPECT_NE(e.message().find("Input/output error"), std::string::npos) << e;
  EXPECT_EQ(e.context().path, f->path());
  ASSERT_TRUE(e.context().offset.has_value());
  EXPECT_EQ(*e.context().offset % GetParam().block_size, 0u);
  EXPECT_LT(*e.context().offset, bytes);
  EXPECT_EQ(e.context().length, GetParam().block_size);
  EXPECT_EQ(e.context().op, "read");
  EXPECT_EQ(faults->failures_injected(), 1u);
  // The engine stays usable, and the data on disk was never touched.
  ASSERT_TRUE(engine.read(*f, 0, dst.span()).wait().has_value());
  EXPECT_EQ(std::memcmp(src.data(), dst.data(), bytes), 0);
}

TEST_P(EngineTest, InjectedEnospcOnWriteIsNoSpace) {
  auto faults = std::make_shared<FaultInjector>();
  FileEngine engine = make_engine(faults);
  auto f = engine.open(dir_.file("nospc"), {OpenMode::kTruncate});
  ASSERT_TRUE(f.has_value());
  AlignedBuffer src = make_buffer(4 * GetParam().block_size, 1);
  faults->fail_next(ENOSPC, 1, FaultTarget::kWrite, 2);
  Status st = engine.write(*f, 0, src.span()).wait();
  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(st.error().code(), ErrorCode::kNoSpace);
  EXPECT_EQ(st.error().context().path, f->path());
  EXPECT_TRUE(engine.write(*f, 0, src.span()).wait().has_value());
}

TEST_P(EngineTest, EintrEagainAndShortTransfersAreRetried) {
  auto faults = std::make_shared<FaultInjector>();
  FileEngine engine = make_engine(faults);
  auto f = engine.open(dir_.file("retry"), {OpenMode::kTruncate});
  ASSERT_TRUE(f.has_value());
  const std::size_t bytes = 8 * GetParam().block_size;
  AlignedBuffer src = make_buffer(bytes, 9), dst = make_buffer(bytes, 0, false);
  faults->fail_next(EINTR, 2, FaultTarget::kWrite);
  faults->fail_next(EAGAIN, 2, FaultTarget::kWrite);
  faults->shorten_next(3, FaultTarget::kWrite);
  ASSERT_TRUE(engine.write(*f, 0, src.span()).wait().has_value());
  faults->shorten_next(4, FaultTarget::kRead);
  faults->fail_next(EAGAIN, 1, FaultTarget::kRead);
  ASSERT_TRUE(engine.read(*f, 0, dst.span()).wait().has_value());
  EXPECT_EQ(std::memcmp(src.data(), dst.data(), bytes), 0);
  EXPECT_EQ(faults->failures_injected(), 5u);
  EXPECT_EQ(faults->shorts_injected(), 7u);
}

TEST_P(EngineTest, EndlessEagainGivesUpWithAnError) {
  auto faults = std::make_shared<FaultInjector>();
  FileEngine engine = make_engine(faults);
  auto f = engine.open(dir_.file("eagain"), {OpenMode::kTruncate});
  ASSERT_TRUE(f.has_value());
  AlignedBuffer src = make_buffer(4096, 1);
  faults->fail_next(EAGAIN, 1000, FaultTarget::kWrite);
  Status st = engine.write(*f, 0, src.span()).wait();
  ASSERT_FALSE(st.has_value());
  EXPECT_NE(st.error().message().find("retries"), std::string::npos) << st.error();
  faults->clear();
  EXPECT_TRUE(engine.write(*f, 0, src.span()).wait().has_value());
}

TEST_P(EngineTest, ReadPastEndOfFileIsDataLoss) {
  FileEngine engine = make_engine();
  auto f = engine.open(dir_.file("eof"), {OpenMode::kTruncate});
  ASSERT_TRUE(f.has_value());
  AlignedBuffer src = make_buffer(3 * 4096, 1), dst = make_buffer(8 * 4096, 0, false);
  ASSERT_TRUE(engine.write(*f, 0, src.span()).wait().has_value());
  Status st = engine.read(*f, 0, dst.span()).wait();
  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(st.error().code(), ErrorCode::kDataLoss);
  EXPECT_NE(st.error().message().find("end of file"), std::string::npos) << st.error();
  EXPECT_EQ(st.error().context().offset, 3u * 4096);
}

TEST_P(EngineTest, InjectedCorruptionFlipsExactlyOneByte) {
  auto faults = std::make_shared<FaultInjector>();
  FileEngine engine = make_engine(faults);
  auto f = engine.open(dir_.file("flip"), {OpenMode::kTruncate});
  ASSERT_TRUE(f.has_value());
  AlignedBuffer src = make_buffer(16384, 3), dst = make_buffer(16384, 0, false);
  ASSERT_TRUE(engine.write(*f, 0, src.span()).wait().has_value());
  faults->corrupt_next_read(1234);
  ASSERT_TRUE(engine.read(*f, 0, dst.span()).wait().has_value());
  int diffs = 0;
  for (std::size_t i = 0; i < src.size(); ++i) diffs += src.data()[i] != dst.data()[i];
  EXPECT_EQ(diffs, 1);
  EXPECT_EQ(faults->corruptions_injected(), 1u);
}

TEST_P(EngineTest, DroppedHandlesWaitAndEngineOutlivedByFile) {
  std::optional<File> file;
  AlignedBuffer src = make_buffer(std::min<std::size_t>(kMaxTestBytes, 16 << 20), 4);
  {
    FileEngine engine = make_engine();
    auto f = engine.open(dir_.file("life"), {OpenMode::kTruncate});
    ASSERT_TRUE(f.has_value());
    for (int i = 0; i < 4; ++i) {
      IoHandle h = engine.write(*f, i * src.size(), src.span());
      EXPECT_FALSE(h.ready() && !h.wait());
    }  // each handle waited in its destructor
    (void)engine.write(*f, 4 * src.size(), src.span());  // discarded at once: waits too
    IoHandle pending = engine.write(*f, 5 * src.size(), src.span());
    file = std::move(*f);
  }  // `pending` waits, then the engine drains and stops; the File outlives it
  ASSERT_TRUE(file->valid());
  auto size = file->size();
  ASSERT_TRUE(size.has_value());
  EXPECT_EQ(*size, 6 * src.size());
}

TEST_P(EngineTest, RegisteredBuffersRoundTrip) {
  FileEngine engine = make_engine();
  EXPECT_EQ(engine.caps().registered_buffers, GetParam().backend == Backend::kUring);
  EXPECT_EQ(engine.caps().registered_files, GetParam().backend == Backend::kUring);
  AlignedBuffer arena = make_buffer(8 << 20, 11);
  auto reg = engine.register_buffer(arena.span());
  ASSERT_TRUE(reg.has_value()) << reg.error();
  EXPECT_EQ(reg->active(), GetParam().backend == Backend::kUring);
  auto f = engine.open(dir_.file("fixed"), {OpenMode::kTruncate});
  ASSERT_TRUE(f.has_value());
  ASSERT_TRUE(engine.write(*f, 0, arena.span().first(4 << 20)).wait().has_value());
  ASSERT_TRUE(engine.read(*f, 0, arena.span().subspan(4 << 20)).wait().has_value());
  EXPECT_EQ(std::memcmp(arena.data(), arena.data() + (4 << 20), 4 << 20), 0);
  *reg = BufferRegistration{};  // unregistered; the memory still works unregistered
  ASSERT_TRUE(engine.read(*f, 4096, arena.span().subspan(8192, 4096)).wait().has_value());
}

TEST_P(EngineTest, ReadOnlyFileRefusesWrites) {
  FileEngine engine = make_engine();
  {
    auto f = engine.open(dir_.file("ro"), {OpenMode::kTruncate});
    ASSERT_TRUE(f.has_value());
  }
  auto ro = engine.open(dir_.file("ro"), {OpenMode::kRead});
  ASSERT_TRUE(ro.has_value());
  AlignedBuffer b = make_buffer(4096);
  EXPECT_EQ(engine.write(*ro, 0, b.span()).wait().error().code(), ErrorCode::kInvalidArgument);
  auto missing = engine.open(dir_.file("missing"), {OpenMode::kReadWrite});
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code(), ErrorCode::kNotFound);
  EXPECT_EQ(missing.error().context().path, dir_.file("missing"));
}

constexpr std::uint64_t kMiB = 1 << 20;

INSTANTIATE_TEST_SUITE_P(
    Backends, EngineTest,
    ::testing::Values(EngineParam{Backend::kUring, kMiB, 8, 1, false, true, "uring"},
                      EngineParam{Backend::kThreadPool, kMiB, 8, 1, false, true, "threads"},
                      EngineParam{Backend::kUring, 64 * 1024, 4, 3, true, true, "uring_small_blocks_3workers_single"},
                      EngineParam{Backend::kUring, 256 * 1024, 6, 1, false, false, "uring_lockstep"},
                      EngineParam{Backend::kThreadPool, 128 * 1024, 3, 2, true, false, "threads_lockstep_2workers"}),
    [](const ::testing::TestParamInfo<EngineParam>& p) { return p.param.name; });

TEST(BackendSelection, FollowsTheProbeAndExplicitRequests) {
  DirectoryProbe p;
  p.dir = "/x";
  p.io_uring = {true, "ok"};
  EXPECT_EQ(select_backend(Backend::kAuto, &p).backend, Backend::kUring);
  p.io_uring = {false, "io_uring_queue_init: Operation not permitted"};
  BackendChoice c = select_backend(Backend::kAuto, &p);
  EXPECT_EQ(c.backend, Backend::kThreadPool);
  EXPECT_NE(c.reason.find("Operation not permitted"), std::string::npos);
  EXPECT_EQ(select_backend(Backend::kThreadPool, nullptr).backend, Backend::kThreadPool);
  EXPECT_EQ(select_backend(Backend::kUring, &p).backend, Backend::kUring);
  EXPECT_EQ(*parse_backend("threads"), Backend::kThreadPool);
  EXPECT_EQ(*parse_backend("io_uring"), Backend::kUring);
  EXPECT_FALSE(parse_backend("spdk").has_value());
}

TEST(EngineOptionsCheck, RejectsBadAioValues) {
  EngineOptions o;
  o.aio.block_size = 1000;
  EXPECT_EQ(FileEngine::create(o).error().code(), ErrorCode::kInvalidArgument);
  o.aio.block_size = 4096;
  o.aio.queue_depth = 0;
  EXPECT_EQ(FileEngine::create(o).error().code(), ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata::io
