#include "strata/ckpt/shard_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace strata::ckpt {
namespace {

// Note [checkpoint page cache]: a save streams gigabytes through the page cache. Every
// 64 MiB the writer starts writeback of what it just wrote and drops the window before
// it (written back by then), so a save neither fills RAM with dirty pages nor ends in
// one long fsync, and the disk is kept busy while the next records are produced.
constexpr std::uint64_t kWindowBytes = 64ull << 20;

Status write_all(int fd, const std::string& path, std::span<const std::byte> bytes, std::uint64_t at) {
  while (!bytes.empty()) {
    const ssize_t n = ::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(at));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(errno_error(errno, "write")).with_path(path).with_offset(at);
    if (n == 0) return make_error(ErrorCode::kIoError, "write made no progress").with_path(path).with_offset(at);
    bytes = bytes.subspan(static_cast<std::size_t>(n));
    at += static_cast<std::uint64_t>(n);
  }
  return ok();
}

Status read_all(int fd, const std::string& path, std::span<std::byte> out, std::uint64_t at) {
  while (!out.empty()) {
    const ssize_t n = ::pread(fd, out.data(), out.size(), static_cast<off_t>(at));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(errno_error(errno, "read")).with_path(path).with_offset(at);
    if (n == 0) return make_error(ErrorCode::kDataLoss, "unexpected end of file (truncated)").with_path(path).with_offset(at);
    out = out.subspan(static_cast<std::size_t>(n));
    at += static_cast<std::uint64_t>(n);
  }
  return ok();
}

}  // namespace

std::uint64_t xxh3(std::span<const std::byte> bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

struct ShardFileWriter::State {
  std::string path;
  int fd = -1;
  std::uint64_t size = 0;
  std::uint64_t started = 0;  // writeback started up to here (Note [checkpoint page cache])
  std::uint64_t dropped = 0;  // written back and dropped from the page cache up to here
  XXH3_state_t* hash = nullptr;
  ~State() {
    if (fd >= 0) ::close(fd);
    if (hash) XXH3_freeState(hash);
  }
};

ShardFileWriter::ShardFileWriter(std::unique_ptr<State> s) : s_(std::move(s)) {}
ShardFileWriter::ShardFileWriter(ShardFileWriter&&) noexcept = default;
ShardFileWriter& ShardFileWriter::operator=(ShardFileWriter&&) noexcept = default;
ShardFileWriter::~ShardFileWriter() = default;
const std::string& ShardFileWriter::path() const { return s_->path; }

Result<ShardFileWriter> ShardFileWriter::create(std::string path) {
  auto s = std::make_unique<State>();
  s->path = std::move(path);
  s->fd = ::open(s->path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (s->fd < 0) return make_error(errno_error(errno, "create")).with_path(s->path);
  s->hash = XXH3_createState();
  XXH3_64bits_reset(s->hash);
  return ShardFileWriter(std::move(s));
}

Result<RecordSpan> ShardFileWriter::append(std::span<const std::byte> bytes) {
  State& s = *s_;
  if (s.fd < 0) return make_error(ErrorCode::kFailedPrecondition, "append after finish").with_path(s.path);
  RecordSpan r{.offset = s.size, .bytes = bytes.size()};
  for (std::uint64_t at = 0; at < bytes.size(); at += kBlockBytes)
    r.blocks.push_back(xxh3(bytes.subspan(at, std::min<std::uint64_t>(kBlockBytes, bytes.size() - at))));
  STRATA_RETURN_IF_ERROR(write_all(s.fd, s.path, bytes, s.size));
  XXH3_64bits_update(s.hash, bytes.data(), bytes.size());
  s.size += bytes.size();
  if (s.size - s.started >= kWindowBytes) {
    // What was started last time is written by now, or nearly: wait for it and drop it
    // from the cache; then start what this window added.
    if (s.started > s.dropped) {
      const auto from = static_cast<off_t>(s.dropped), len = static_cast<off_t>(s.started - s.dropped);
      ::sync_file_range(s.fd, from, len, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
      ::posix_fadvise(s.fd, from, len, POSIX_FADV_DONTNEED);
      s.dropped = s.started;
    }
    ::sync_file_range(s.fd, static_cast<off_t>(s.started), static_cast<off_t>(s.size - s.started), SYNC_FILE_RANGE_WRITE);
    s.started = s.size;
  }
  return r;
}

Result<FileSum> ShardFileWriter::finish() {
  State& s = *s_;
  if (s.fd < 0) return make_error(ErrorCode::kFailedPrecondition, "finish twice").with_path(s.path);
  if (::fsync(s.fd) != 0) return make_error(errno_error(errno, "fsync")).with_path(s.path);
  ::posix_fadvise(s.fd, 0, 0, POSIX_FADV_DONTNEED);
  const int fd = s.fd;
  s.fd = -1;
  if (::close(fd) != 0) return make_error(errno_error(errno, "close")).with_path(s.path);
  return FileSum{.bytes = s.size, .xxh3 = XXH3_64bits_digest(s.hash)};
}

struct ShardFileReader::State {
  std::string path;
  int fd = -1;
  std::uint64_t size = 0;
  std::vector<std::byte> block;  // one block, for verified reads
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
  s->fd = ::open(s->path.c_str(), O_RDONLY | O_CLOEXEC);
  if (s->fd < 0) return make_error(errno_error(errno, "open")).with_path(s->path);
  struct stat st {};
  if (::fstat(s->fd, &st) != 0) return make_error(errno_error(errno, "stat")).with_path(s->path);
  s->size = static_cast<std::uint64_t>(st.st_size);
  if (s->size != bytes) {
    return make_error(ErrorCode::kDataLoss, "the file has {} bytes, the checkpoint's metadata says {}{}", s->size, bytes,
                      s->size < bytes ? " (truncated)" : "")
        .with_path(s->path);
  }
  s->block.resize(kBlockBytes);
  return ShardFileReader(std::move(s));
}

Status ShardFileReader::read(const RecordSpan& r, std::uint64_t offset, std::span<std::byte> out) {
  State& s = *s_;
  if (offset + out.size() > r.bytes) {
    return make_error(ErrorCode::kOutOfRange, "read of {} bytes at {} past a record of {}", out.size(), offset, r.bytes)
        .with_path(s.path);
  }
  std::uint64_t pos = offset;
  while (pos < offset + out.size()) {
    const std::uint64_t b = pos / kBlockBytes, begin = b * kBlockBytes;
    const std::uint64_t len = std::min(kBlockBytes, r.bytes - begin);
    if (b >= r.blocks.size()) return make_error(ErrorCode::kDataLoss, "block {} has no checksum", b).with_path(s.path);
    std::span<std::byte> block(s.block.data(), len);
    STRATA_RETURN_IF_ERROR(read_all(s.fd, s.path, block, r.offset + begin));
    if (xxh3(block) != r.blocks[b]) {
      return make_error(ErrorCode::kDataLoss, "checksum mismatch in the {} bytes at this offset", len)
          .with_path(s.path)
          .with_offset(r.offset + begin);
    }
    const std::uint64_t end = std::min(begin + len, offset + out.size());
    std::memcpy(out.data() + (pos - offset), block.data() + (pos - begin), end - pos);
    pos = end;
  }
  return ok();
}

Status ShardFileReader::verify(const FileSum& sum, std::span<const RecordSpan> records) {
  State& s = *s_;
  std::vector<const RecordSpan*> order;
  for (const RecordSpan& r : records) order.push_back(&r);
  std::ranges::sort(order, {}, &RecordSpan::offset);
  XXH3_state_t* hash = XXH3_createState();
  XXH3_64bits_reset(hash);
  auto hashed = [&](std::uint64_t from, std::uint64_t to) -> Status {  // bytes outside records
    for (std::uint64_t at = from; at < to;) {
      const std::uint64_t len = std::min(kBlockBytes, to - at);
      STRATA_RETURN_IF_ERROR(read_all(s.fd, s.path, std::span(s.block.data(), len), at));
      XXH3_64bits_update(hash, s.block.data(), len);
      at += len;
    }
    return ok();
  };
  Status st = ok();
  std::uint64_t at = 0;
  for (const RecordSpan* r : order) {
    if (st) st = hashed(at, r->offset);
    for (std::uint64_t b = 0; st && b * kBlockBytes < r->bytes; ++b) {
      const std::uint64_t len = std::min(kBlockBytes, r->bytes - b * kBlockBytes);
      std::span<std::byte> block(s.block.data(), len);
      st = read_all(s.fd, s.path, block, r->offset + b * kBlockBytes);
      if (!st) break;
      XXH3_64bits_update(hash, block.data(), len);
      if (b >= r->blocks.size() || xxh3(block) != r->blocks[b]) {
        st = make_error(ErrorCode::kDataLoss, "checksum mismatch in the {} bytes at this offset", len)
                 .with_path(s.path)
                 .with_offset(r->offset + b * kBlockBytes);
      }
    }
    at = std::max(at, r->offset + r->bytes);
  }
  if (st) st = hashed(at, s.size);
  const std::uint64_t whole = XXH3_64bits_digest(hash);
  XXH3_freeState(hash);
  STRATA_RETURN_IF_ERROR(st);
  if (whole != sum.xxh3) return make_error(ErrorCode::kDataLoss, "the file's checksum does not match").with_path(s.path);
  return ok();
}

}  // namespace strata::ckpt
