#include "strata/ckpt/shard_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <future>
#include <optional>

#include "strata/base/aligned.h"
#include "strata/base/thread_pool.h"
#include "strata/io/file_engine.h"

namespace strata::ckpt {
namespace {

// Note [checkpoint reads]: loads read O_DIRECT too (the 4 KiB-aligned span around the
// blocks they need): with buffered reads, copying out of the page cache was 29% of
// strata bench ckpt's CPU samples, for data read once.
//
// Note [checkpoint writes]: a save is one sequential stream per rank. Buffered writes
// and an fsync ran at 0.4 GB/s on the development disk (dd conv=fsync) and at 1.16 GB/s
// with writeback started every 64 MiB, against 1.98 GB/s for O_DIRECT writes with 8 in
// flight (strata bench io). So the writer copies records into 4 aligned staging
// buffers (8 MiB each by default) and writes each full one with O_DIRECT through the io engine (io_uring when
// it works; 1 MiB pieces, 8 in flight, as bench io), into a file allocated up front;
// the last buffer is padded to 4 KiB and the file truncated to its length. A filesystem
// that refuses O_DIRECT (tmpfs) gets the same writes buffered. The copy and the block
// checksums each take about a quarter second per GB on one core here, so the
// checksums run on a helper thread next to the copy. The staging buffers, and the
// reader's, sit on huge pages (Note [huge pages] in io/buffer_pool.h).
constexpr int kStagingBuffers = 4;
constexpr std::uint64_t kReadBlocks = 8;  // blocks per read when loading

}  // namespace

std::uint64_t xxh3(std::span<const std::byte> bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

std::uint64_t file_checksum(std::span<const std::uint64_t> block_sums) {
  return XXH3_64bits(block_sums.data(), block_sums.size_bytes());  // little-endian hosts only (as the data)
}

struct ShardFileWriter::State {
  std::string path;
  std::optional<io::FileEngine> engine;
  io::File file;
  std::size_t buffer_bytes = 0;  // each staging buffer's
  std::array<AlignedBuffer, kStagingBuffers> staging;
  std::array<io::IoHandle, kStagingBuffers> writes;  // staging[i]'s write in flight
  int current = 0;             // the buffer being filled
  std::size_t filled = 0;      // bytes in it
  std::uint64_t size = 0;      // bytes appended
  std::uint64_t written = 0;   // file offset of the current buffer's first byte
  bool finished = false;
  std::unique_ptr<ThreadPool> hasher;     // one thread: block checksums
  std::vector<std::uint64_t> block_sums;  // every block's, in file order
  ~State() {
    for (auto& w : writes)
      if (w.valid()) (void)w.wait();  // the buffers outlive their writes
  }
  // Writes the current buffer (its first `len` bytes, a multiple of 4 KiB) and moves on
  // to the next one, waiting for that one's earlier write.
  Status flush(std::size_t len) {
    writes[current] = engine->write(file, written, {staging[current].data(), len});
    written += len;
    current = (current + 1) % kStagingBuffers;
    filled = 0;
    if (!writes[current].valid()) return ok();
    Status st = writes[current].wait();
    writes[current] = io::IoHandle();
    return st;
  }
};

ShardFileWriter::ShardFileWriter(std::unique_ptr<State> s) : s_(std::move(s)) {}
ShardFileWriter::ShardFileWriter(ShardFileWriter&&) noexcept = default;
ShardFileWriter& ShardFileWriter::operator=(ShardFileWriter&&) noexcept = default;
ShardFileWriter::~ShardFileWriter() = default;
const std::string& ShardFileWriter::path() const { return s_->path; }

Result<ShardFileWriter> ShardFileWriter::create(std::string path, std::uint64_t expect_bytes, std::size_t buffer_bytes,
                                                std::shared_ptr<io::FaultInjector> faults) {
  if (buffer_bytes == 0 || buffer_bytes % io::kDirectAlignment != 0) {
    return make_error(ErrorCode::kInvalidArgument, "staging buffers of {} bytes: not a multiple of 4 KiB", buffer_bytes);
  }
  auto s = std::make_unique<State>();
  s->path = std::move(path);
  s->buffer_bytes = buffer_bytes;
  io::EngineOptions eo;
  eo.aio.block_size = 1 << 20;  // as strata bench io's baseline: 1 MiB pieces, 8 in flight
  eo.aio.queue_depth = 8;
  eo.faults = std::move(faults);
  STRATA_ASSIGN_OR_RETURN(io::FileEngine engine, io::FileEngine::create(eo));
  s->engine.emplace(std::move(engine));
  STRATA_ASSIGN_OR_RETURN(s->file, s->engine->open(s->path, {.mode = io::OpenMode::kTruncate, .direct = true}));
  if (expect_bytes > 0) STRATA_RETURN_IF_ERROR(s->file.allocate(0, round_up(expect_bytes, io::kDirectAlignment)));
  for (auto& b : s->staging) {
    STRATA_ASSIGN_OR_RETURN(b, AlignedBuffer::allocate(s->buffer_bytes, io::kDirectAlignment, Pages::kHuge));
  }
  s->hasher = std::make_unique<ThreadPool>(1);
  return ShardFileWriter(std::move(s));
}

Result<RecordSpan> ShardFileWriter::append(std::span<const std::byte> bytes) {
  State& s = *s_;
  if (s.finished) return make_error(ErrorCode::kFailedPrecondition, "append after finish").with_path(s.path);
  RecordSpan r{.offset = s.size, .bytes = bytes.size()};
  // The block checksums on the helper thread while this one copies and writes (Note
  // [checkpoint writes]: copy and hash are the save's CPU work, about half each).
  std::future<std::vector<std::uint64_t>> sums = s.hasher->submit([bytes] {
    std::vector<std::uint64_t> out;
    for (std::uint64_t at = 0; at < bytes.size(); at += kBlockBytes)
      out.push_back(xxh3(bytes.subspan(at, std::min<std::uint64_t>(kBlockBytes, bytes.size() - at))));
    return out;
  });
  Status st = ok();
  for (std::span<const std::byte> rest = bytes; st && !rest.empty();) {
    const std::size_t n = std::min(rest.size(), s.buffer_bytes - s.filled);
    std::memcpy(s.staging[s.current].data() + s.filled, rest.data(), n);
    s.filled += n;
    rest = rest.subspan(n);
    if (s.filled == s.buffer_bytes) st = s.flush(s.buffer_bytes);
  }
  r.blocks = sums.get();  // also on failure: the task reads `bytes`
  STRATA_RETURN_IF_ERROR(st);
  s.block_sums.insert(s.block_sums.end(), r.blocks.begin(), r.blocks.end());
  s.size += r.bytes;
  return r;
}

Result<FileSum> ShardFileWriter::finish() {
  State& s = *s_;
  if (s.finished) return make_error(ErrorCode::kFailedPrecondition, "finish twice").with_path(s.path);
  s.finished = true;
  if (s.filled > 0) {  // padded to the direct I/O alignment; truncated below
    const std::size_t len = round_up(s.filled, io::kDirectAlignment);
    std::memset(s.staging[s.current].data() + s.filled, 0, len - s.filled);
    STRATA_RETURN_IF_ERROR(s.flush(len));
  }
  Status first = ok();
  for (auto& w : s.writes) {
    if (!w.valid()) continue;
    if (Status st = w.wait(); !st && first) first = std::move(st);
    w = io::IoHandle();
  }
  STRATA_RETURN_IF_ERROR(first);
  STRATA_RETURN_IF_ERROR(s.file.truncate(s.size));
  if (::fsync(s.file.fd()) != 0) return make_error(errno_error(errno, "fsync")).with_path(s.path);
  s.file = io::File();
  return FileSum{.bytes = s.size, .xxh3 = file_checksum(s.block_sums)};
}

struct ShardFileReader::State {
  std::string path;
  int fd = -1;
  std::uint64_t size = 0;
  bool direct = false;           // opened O_DIRECT (Note [checkpoint reads])
  AlignedBuffer buf;              // kReadBlocks blocks and the 4 KiB around them
  std::uint64_t cached_at = 0, cached_len = 0;  // the verified bytes at `data`
  std::byte* data = nullptr;      // where the last read's bytes start in buf
  // [at, at + len) of the file into buf; `data` points at its first byte.
  Status read_at(std::uint64_t at, std::uint64_t len) {
    const std::uint64_t from = direct ? at / io::kDirectAlignment * io::kDirectAlignment : at;
    const std::uint64_t want = at + len;
    const std::uint64_t until = direct ? round_up(want, io::kDirectAlignment) : want;
    std::uint64_t pos = from;
    while (pos < until) {
      const ssize_t n = ::pread(fd, buf.data() + (pos - from), until - pos, static_cast<off_t>(pos));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return make_error(errno_error(errno, "read")).with_path(path).with_offset(pos);
      if (n == 0) break;  // end of file: the last page of a direct read is short
      pos += static_cast<std::uint64_t>(n);
    }
    if (pos < want) return make_error(ErrorCode::kDataLoss, "unexpected end of file (truncated)").with_path(path).with_offset(pos);
    data = buf.data() + (at - from);
    return ok();
  }
  ~State() {
    if (fd >= 0) ::close(fd);
  }
};

ShardFileReader::ShardFileReader(std::unique_ptr<State> s) : s_(std::move(s)) {}
ShardFileReader::ShardFileReader(ShardFileReader&&) noexcept = default;
ShardFileReader& ShardFileReader::operator=(ShardFileReader&&) noexcept = default;
ShardFileReader::~ShardFileReader() = default;
const std::string& ShardFileReader::path() const { return s_->path; }

Result<ShardFileReader> ShardFileReader::open(std::string path, std::uint64_t bytes) {
  auto s = std::make_unique<State>();
  s->path = std::move(path);
  s->fd = ::open(s->path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  s->direct = s->fd >= 0;
  if (s->fd < 0 && errno == EINVAL) s->fd = ::open(s->path.c_str(), O_RDONLY | O_CLOEXEC);  // no O_DIRECT here (tmpfs)
  if (s->fd < 0) return make_error(errno_error(errno, "open")).with_path(s->path);
  struct stat st {};
  if (::fstat(s->fd, &st) != 0) return make_error(errno_error(errno, "stat")).with_path(s->path);
  s->size = static_cast<std::uint64_t>(st.st_size);
  if (s->size != bytes) {
    return make_error(ErrorCode::kDataLoss, "the file has {} bytes, the checkpoint's metadata says {}{}", s->size, bytes,
                      s->size < bytes ? " (truncated)" : "")
        .with_path(s->path);
  }
  STRATA_ASSIGN_OR_RETURN(s->buf, AlignedBuffer::allocate(kReadBlocks * kBlockBytes + 2 * io::kDirectAlignment, io::kDirectAlignment, Pages::kHuge));
  return ShardFileReader(std::move(s));
}

Status ShardFileReader::read(const RecordSpan& r, std::uint64_t offset, std::span<std::byte> out) {
  State& s = *s_;
  if (offset + out.size() > r.bytes) {
    return make_error(ErrorCode::kOutOfRange, "read of {} bytes at {} past a record of {}", out.size(), offset, r.bytes)
        .with_path(s.path);
  }
  // Whole blocks, up to kReadBlocks of them per read, each verified before use.
  std::uint64_t pos = offset;
  while (pos < offset + out.size()) {
    const std::uint64_t b0 = pos / kBlockBytes, begin = b0 * kBlockBytes;
    const std::uint64_t last = (offset + out.size() - 1) / kBlockBytes;
    const std::uint64_t nb = std::min<std::uint64_t>(last - b0 + 1, kReadBlocks);
    const std::uint64_t len = std::min(nb * kBlockBytes, r.bytes - begin);
    if (b0 + nb > r.blocks.size()) return make_error(ErrorCode::kDataLoss, "block {} has no checksum", b0 + nb - 1).with_path(s.path);
    // Already read and verified: the last read's blocks (neighbouring slices of one record).
    const std::uint64_t file_at = r.offset + begin;
    const bool cached = s.cached_len > 0 && file_at == s.cached_at && len <= s.cached_len;
    if (!cached) {
      s.cached_len = 0;
      STRATA_RETURN_IF_ERROR(s.read_at(file_at, len));
    }
    for (std::uint64_t b = 0; !cached && b < nb; ++b) {
      const std::uint64_t at = b * kBlockBytes, n = std::min(kBlockBytes, len - at);
      if (xxh3(std::span(s.data + at, n)) != r.blocks[b0 + b]) {
        return make_error(ErrorCode::kDataLoss, "checksum mismatch in the {} bytes at this offset", n)
            .with_path(s.path)
            .with_offset(r.offset + begin + at);
      }
    }
    if (!cached) s.cached_at = file_at, s.cached_len = len;
    const std::uint64_t end = std::min(begin + len, offset + out.size());
    std::memcpy(out.data() + (pos - offset), s.data + (pos - begin), end - pos);
    pos = end;
  }
  return ok();
}

Status ShardFileReader::verify(const FileSum& sum, std::span<const RecordSpan> records) {
  State& s = *s_;
  std::vector<const RecordSpan*> order;
  for (const RecordSpan& r : records) order.push_back(&r);
  std::ranges::sort(order, {}, &RecordSpan::offset);
  std::uint64_t at = 0;
  std::vector<std::uint64_t> sums;
  for (const RecordSpan* r : order) {
    if (r->offset != at) return make_error(ErrorCode::kDataLoss, "the records do not tile the file").with_path(s.path).with_offset(at);
    for (std::uint64_t b = 0; b * kBlockBytes < r->bytes; ++b) {
      const std::uint64_t len = std::min(kBlockBytes, r->bytes - b * kBlockBytes);
      STRATA_RETURN_IF_ERROR(s.read_at(r->offset + b * kBlockBytes, len));
      sums.push_back(xxh3(std::span(s.data, len)));
      if (b >= r->blocks.size() || sums.back() != r->blocks[b]) {
        return make_error(ErrorCode::kDataLoss, "checksum mismatch in the {} bytes at this offset", len)
            .with_path(s.path)
            .with_offset(r->offset + b * kBlockBytes);
      }
    }
    at += r->bytes;
  }
  if (at != s.size) return make_error(ErrorCode::kDataLoss, "{} bytes past the last record", s.size - at).with_path(s.path);
  if (file_checksum(sums) != sum.xxh3) return make_error(ErrorCode::kDataLoss, "the file's checksum does not match").with_path(s.path);
  return ok();
}

}  // namespace strata::ckpt
