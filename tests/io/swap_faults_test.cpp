// SwapStore error paths. Each one must end in a clear error with context (file,
// offset, length), and the store must stay usable afterwards: ENOSPC at preallocation
// (file-size limit and a small tmpfs), EIO mid-transfer on put and get, a flipped
// byte (in flight and on disk), a truncated file, stale and foreign records.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>

#include "io/io_test_util.h"
#include "strata/io/fault_injection.h"
#include "strata/io/swap_store.h"

namespace strata::io {
namespace {

using strata::testing::make_buffer;
using strata::testing::swap_key;
using strata::testing::run_in_child;
using strata::testing::ScratchDir;
namespace fs = std::filesystem;

SwapStoreOptions options_for(const std::string& path, std::shared_ptr<FaultInjector> faults = nullptr,
                             Backend backend = Backend::kAuto) {
  SwapStoreOptions o;
  o.nvme_path = path;
  o.job_name = "faults";
  o.min_io_bytes = 0;
  o.pool_bytes = 16 << 20;
  o.aio.block_size = 1 << 20;
  o.faults = std::move(faults);
  o.backend = backend;
  return o;
}

std::vector<std::byte> read_file_range(const std::string& path, std::uint64_t off, std::size_t n) {
  std::vector<std::byte> out(n);
  const int fd = ::open(path.c_str(), O_RDONLY);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::pread(fd, out.data(), n, static_cast<off_t>(off)), static_cast<ssize_t>(n));
  ::close(fd);
  return out;
}

void write_file_range(const std::string& path, std::uint64_t off, std::span<const std::byte> bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(off)), static_cast<ssize_t>(bytes.size()));
  ::fsync(fd);
  ::close(fd);
}

// Checks the store still round-trips a record after an error.
void expect_usable(SwapStore& store, const SwapKey& k, std::size_t n, std::uint64_t seed) {
  AlignedBuffer src = make_buffer(n, seed), dst = make_buffer(n);
  ASSERT_TRUE(store.put(k, src.span()).has_value());
  auto st = store.get(k, dst.span());
  ASSERT_TRUE(st.has_value()) << st.error();
  EXPECT_EQ(std::memcmp(src.data(), dst.data(), n), 0);
}

// What both ENOSPC tests check once the disk cannot take a reservation.
std::string enospc_scenario(const std::string& nvme_path, std::uint64_t too_much) {
  auto s = SwapStore::open(options_for(nvme_path));
  if (!s) return "open: " + s.error().to_string();
  SwapStore& store = **s;
  if (auto st = store.reserve(swap_key(1), 2 << 20); !st) return "small reserve: " + st.error().to_string();
  const auto before = fs::file_size(store.path(SwapKind::kOptimizer));
  auto st = store.reserve({{swap_key(2), too_much}, {swap_key(3), 1 << 20}});
  if (st) return "reserving " + std::to_string(too_much) + " bytes succeeded";
  const Error& e = st.error();
  std::string why;
  if (e.code() != ErrorCode::kNoSpace) why += " code=" + std::string(to_string(e.code()));
  if (e.context().path != store.path(SwapKind::kOptimizer)) why += " path=" + e.context().path.value_or("none");
  if (e.context().offset != before) why += " offset=" + std::to_string(e.context().offset.value_or(0));
  if (!e.context().length || *e.context().length < too_much) why += " length";
  if (e.message().find("reserving") == std::string::npos) why += " message";
  if (!why.empty()) return "unexpected error (" + why + "): " + e.to_string();
  if (fs::file_size(store.path(SwapKind::kOptimizer)) != before) return "the failed reservation left the file grown";
  if (store.info(swap_key(3))) return "part of a failed reservation was kept";
  // Usable afterwards: the reservation that fits, and the old record.
  if (auto r = store.reserve(swap_key(3), 1 << 20); !r) return "reserve after ENOSPC: " + r.error().to_string();
  for (auto [k, n] : {std::pair{swap_key(1), 2 << 20}, std::pair{swap_key(3), 1 << 20}}) {
    AlignedBuffer src = make_buffer(n, k.chunk), dst = make_buffer(n);
    if (auto r = store.put(k, src.span()); !r) return "put after ENOSPC: " + r.error().to_string();
    if (auto r = store.get(k, dst.span()); !r) return "get after ENOSPC: " + r.error().to_string();
    if (std::memcmp(src.data(), dst.data(), n) != 0) return "data differs after ENOSPC";
  }
  std::printf("ENOSPC error: %s\n", e.to_string().c_str());
  return "";
}

TEST(SwapFaults, EnospcAtPreallocationUnderAFileSizeLimit) {
  ScratchDir dir;
  // RLIMIT_FSIZE is process-wide, so the scenario runs in a child. fallocate past the
  // limit fails with EFBIG (and SIGXFSZ, ignored), which maps to kNoSpace.
  const std::string r = run_in_child([&] {
    ::signal(SIGXFSZ, SIG_IGN);
    rlimit lim{32 << 20, 32 << 20};
    if (::setrlimit(RLIMIT_FSIZE, &lim) != 0) return std::string("setrlimit failed");
    return enospc_scenario(dir.path(), std::uint64_t{1} << 30);
  });
  EXPECT_EQ(r, "");
}

TEST(SwapFaults, EnospcAtPreallocationOnASmallTmpfs) {
  ScratchDir dir;
  const std::string mnt = dir.file("tmpfs");
  fs::create_directory(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=24m") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno)
                 << "); the file-size-limit test covers ENOSPC";
  }
  const std::string r = enospc_scenario(mnt, 64 << 20);  // real ENOSPC from the filesystem
  ::umount2(mnt.c_str(), MNT_DETACH);
  EXPECT_EQ(r, "");
}

class SwapFaultBackends : public ::testing::TestWithParam<Backend> {};

TEST_P(SwapFaultBackends, EioMidTransferOnPutLosesOnlyThatRecord) {
  ScratchDir dir;
  auto faults = std::make_shared<FaultInjector>();
  auto s = SwapStore::open(options_for(dir.path(), faults, GetParam()));
  ASSERT_TRUE(s.has_value()) << s.error();
  SwapStore& store = **s;
  ASSERT_TRUE(store.reserve({{swap_key(1), 8 << 20}, {swap_key(2), 8 << 20}}).has_value());
  expect_usable(store, swap_key(2), 8 << 20, 2);
  AlignedBuffer src = make_buffer(8 << 20, 1);
  faults->fail_next(EIO, 1, FaultTarget::kWrite, /*skip=*/3);
  auto st = store.put(swap_key(1), src.span());
  ASSERT_FALSE(st.has_value());
  const Error& e = st.error();
  EXPECT_EQ(e.code(), ErrorCode::kIoError) << e;
  EXPECT_EQ(e.context().path, store.path(SwapKind::kOptimizer));
  ASSERT_TRUE(e.context().offset.has_value());
  EXPECT_TRUE(e.context().length == 1u << 20 || e.context().length == 4096u) << e;  // a payload or header piece
  EXPECT_NE(e.message().find("swap-out of optimizer/chunk1/tensor0"), std::string::npos) << e;
  EXPECT_TRUE(store.info(swap_key(1))->lost);
  AlignedBuffer dst = make_buffer(8 << 20);
  auto g = store.get(swap_key(1), dst.span());
  ASSERT_FALSE(g.has_value());
  EXPECT_EQ(g.error().code(), ErrorCode::kDataLoss);
  EXPECT_NE(g.error().message().find("last put failed"), std::string::npos) << g.error();
  // The other record is untouched, and a new put restores the lost one.
  AlignedBuffer other = make_buffer(8 << 20, 2);
  ASSERT_TRUE(store.get(swap_key(2), dst.span()).has_value());
  EXPECT_EQ(std::memcmp(other.data(), dst.data(), 8 << 20), 0);
  expect_usable(store, swap_key(1), 8 << 20, 11);
  EXPECT_FALSE(store.info(swap_key(1))->lost);
}

TEST_P(SwapFaultBackends, EioMidTransferOnGetLeavesTheRecordIntact) {
  ScratchDir dir;
  auto faults = std::make_shared<FaultInjector>();
  auto s = SwapStore::open(options_for(dir.path(), faults, GetParam()));
  ASSERT_TRUE(s.has_value());
  SwapStore& store = **s;
  ASSERT_TRUE(store.reserve(swap_key(1), 8 << 20).has_value());
  AlignedBuffer src = make_buffer(8 << 20, 1), dst = make_buffer(8 << 20);
  ASSERT_TRUE(store.put(swap_key(1), src.span()).has_value());
  faults->fail_next(EIO, 1, FaultTarget::kRead, /*skip=*/4);
  auto st = store.get(swap_key(1), dst.span());
  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(st.error().code(), ErrorCode::kIoError);
  EXPECT_EQ(st.error().context().path, store.path(SwapKind::kOptimizer));
  EXPECT_NE(st.error().message().find("swap-in of"), std::string::npos) << st.error();
  ASSERT_TRUE(store.get(swap_key(1), dst.span()).has_value());
  EXPECT_EQ(std::memcmp(src.data(), dst.data(), 8 << 20), 0);
}

TEST_P(SwapFaultBackends, ByteFlippedInFlightIsCaughtByTheChecksum) {
  ScratchDir dir;
  auto faults = std::make_shared<FaultInjector>();
  auto s = SwapStore::open(options_for(dir.path(), faults, GetParam()));
  ASSERT_TRUE(s.has_value());
  SwapStore& store = **s;
  const std::size_t n = (3 << 20) + 123;  // a tail block too
  ASSERT_TRUE(store.reserve(swap_key(1), n).has_value());
  AlignedBuffer src = make_buffer(n, 1), dst = make_buffer(n);
  ASSERT_TRUE(store.put(swap_key(1), src.span()).has_value());
  // Byte indices below 123 land in real data whichever piece completes next: the
  // header block, a payload piece, or the 123 bytes of the tail block.
  for (std::size_t at : {std::size_t{17}, std::size_t{60}, std::size_t{122}}) {
    faults->corrupt_next_read(at);
    auto st = store.get(swap_key(1), dst.span());
    ASSERT_FALSE(st.has_value()) << "flip at " << at;
    EXPECT_EQ(st.error().code(), ErrorCode::kDataLoss);
    EXPECT_NE(st.error().message().find("checksum mismatch"), std::string::npos) << st.error();
    EXPECT_EQ(st.error().context().path, store.path(SwapKind::kOptimizer));
    EXPECT_EQ(st.error().context().offset, 4096u);  // the slot
    EXPECT_EQ(st.error().context().length, 4096u + round_up(n, 4096));
  }
  ASSERT_TRUE(store.get(swap_key(1), dst.span()).has_value());  // the disk was never wrong
  EXPECT_EQ(std::memcmp(src.data(), dst.data(), n), 0);
  EXPECT_EQ(store.stats().verify_failures, 3u);
}

INSTANTIATE_TEST_SUITE_P(Backends, SwapFaultBackends, ::testing::Values(Backend::kUring, Backend::kThreadPool),
                         [](const ::testing::TestParamInfo<Backend>& p) {
                           return std::string(p.param == Backend::kUring ? "uring" : "threads");
                         });

TEST(SwapFaults, ByteFlippedOnDiskIsCaughtInPayloadAndHeader) {
  ScratchDir dir;
  auto s = SwapStore::open(options_for(dir.path()));
  ASSERT_TRUE(s.has_value());
  SwapStore& store = **s;
  const std::size_t n = 2 << 20;
  ASSERT_TRUE(store.reserve({{swap_key(1), n}, {swap_key(2), n}}).has_value());
  AlignedBuffer src = make_buffer(n, 1), dst = make_buffer(n);
  ASSERT_TRUE(store.put(swap_key(1), src.span()).has_value());
  expect_usable(store, swap_key(2), n, 2);
  const std::string path = store.path(SwapKind::kOptimizer);
  const std::uint64_t slot = store.info(swap_key(1))->offset;
  for (std::uint64_t at : {slot + 4096 + 777, slot + 40}) {  // payload, then header
    auto b = read_file_range(path, at, 1);
    b[0] ^= std::byte{0x01};
    write_file_range(path, at, b);
    auto st = store.get(swap_key(1), dst.span());
    ASSERT_FALSE(st.has_value());
    EXPECT_EQ(st.error().code(), ErrorCode::kDataLoss);
    EXPECT_NE(st.error().message().find(at == slot + 40 ? "record header checksum" : "payload checksum"),
              std::string::npos)
        << st.error();
    EXPECT_EQ(st.error().context().offset, slot);
    EXPECT_TRUE(store.get(swap_key(2), dst.span()).has_value());  // neighbours unaffected
    expect_usable(store, swap_key(1), n, 3);                       // rewriting heals it
  }
}

TEST(SwapFaults, TruncatedFileIsAClearErrorAndRewritable) {
  ScratchDir dir;
  auto s = SwapStore::open(options_for(dir.path()));
  ASSERT_TRUE(s.has_value());
  SwapStore& store = **s;
  const std::size_t n = 4 << 20;
  ASSERT_TRUE(store.reserve({{swap_key(1), n}, {swap_key(2), n}}).has_value());
  AlignedBuffer a = make_buffer(n, 1), b = make_buffer(n, 2), dst = make_buffer(n);
  ASSERT_TRUE(store.put(swap_key(1), a.span()).has_value());
  ASSERT_TRUE(store.put(swap_key(2), b.span()).has_value());
  const std::string path = store.path(SwapKind::kOptimizer);
  const std::uint64_t cut = store.info(swap_key(2))->offset + 4096 + n / 2;
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(cut)), 0);
  auto st = store.get(swap_key(2), dst.span());
  ASSERT_FALSE(st.has_value());
  const Error& e = st.error();
  EXPECT_EQ(e.code(), ErrorCode::kDataLoss) << e;
  EXPECT_NE(e.message().find("end of file"), std::string::npos) << e;
  EXPECT_NE(e.message().find(std::to_string(cut)), std::string::npos) << e;  // the file size
  EXPECT_EQ(e.context().path, path);
  EXPECT_GE(*e.context().offset, cut);
  ASSERT_TRUE(store.get(swap_key(1), dst.span()).has_value());  // before the cut: fine
  EXPECT_EQ(std::memcmp(a.data(), dst.data(), n), 0);
  expect_usable(store, swap_key(2), n, 5);  // a new put writes the slot again
}

TEST(SwapFaults, StaleAndForeignRecordsAreRejected) {
  ScratchDir dir, other_dir;
  auto s = SwapStore::open(options_for(dir.path()));
  ASSERT_TRUE(s.has_value());
  SwapStore& store = **s;
  const std::size_t n = 1 << 20;
  ASSERT_TRUE(store.reserve(swap_key(1), n).has_value());
  const std::string path = store.path(SwapKind::kOptimizer);
  const std::uint64_t slot = store.info(swap_key(1))->offset;
  AlignedBuffer a = make_buffer(n, 1), b = make_buffer(n, 2), dst = make_buffer(n);
  ASSERT_TRUE(store.put(swap_key(1), a.span()).has_value());
  const auto gen1 = read_file_range(path, slot, 4096 + n);
  ASSERT_TRUE(store.put(swap_key(1), b.span()).has_value());
  write_file_range(path, slot, gen1);  // the disk "loses" the second write
  auto st = store.get(swap_key(1), dst.span());
  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(st.error().code(), ErrorCode::kDataLoss);
  EXPECT_NE(st.error().message().find("stale record: generation 1 on disk, expected 2"), std::string::npos)
      << st.error();

  // The same key and slot, written by another store (another run).
  auto o = SwapStore::open(options_for(other_dir.path()));
  ASSERT_TRUE(o.has_value());
  ASSERT_TRUE((*o)->reserve(swap_key(1), n).has_value());
  ASSERT_TRUE((*o)->put(swap_key(1), b.span()).has_value());
  ASSERT_TRUE((*o)->put(swap_key(1), b.span()).has_value());  // generation 2, like ours
  write_file_range(path, slot, read_file_range((*o)->path(SwapKind::kOptimizer), slot, 4096 + n));
  st = store.get(swap_key(1), dst.span());
  ASSERT_FALSE(st.has_value());
  EXPECT_NE(st.error().message().find("written by another run"), std::string::npos) << st.error();
  expect_usable(store, swap_key(1), n, 9);
}

}  // namespace
}  // namespace strata::io
