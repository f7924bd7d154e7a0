#include "strata/io/probe.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#include "strata/base/aligned.h"

namespace strata::io {
namespace {

constexpr std::size_t kBlock = 4096;

std::string filesystem_name(long magic) {
  switch (static_cast<unsigned long>(magic)) {
    case 0xEF53: return "ext4";
    case 0x58465342: return "xfs";
    case 0x01021994: return "tmpfs";
    case 0x9123683E: return "btrfs";
    case 0x794C7630: return "overlayfs";
    case 0x6969: return "nfs";
    case 0x2FC12FC1: return "zfs";
    case 0x65735546: return "fuse";
    default: return fmt::format("0x{:x}", static_cast<unsigned long>(magic));
  }
}

std::string errno_text(const char* what, int err) { return fmt::format("{}: {}", what, std::strerror(err)); }

// Writes a patterned block to fd at offset 0 and reads it back through io_uring.
Capability uring_roundtrip(int fd, std::byte* wbuf, std::byte* rbuf) {
  io_uring ring;
  if (int rc = io_uring_queue_init(4, &ring, 0); rc < 0) return {false, errno_text("io_uring_queue_init", -rc)};
  Capability cap{true, "queue init, O_DIRECT write and read completed"};
  auto run = [&](bool write) -> int {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    if (write) io_uring_prep_write(sqe, fd, wbuf, kBlock, 0);
    else io_uring_prep_read(sqe, fd, rbuf, kBlock, 0);
    if (int rc = io_uring_submit(&ring); rc < 0) return rc;
    io_uring_cqe* cqe = nullptr;
    if (int rc = io_uring_wait_cqe(&ring, &cqe); rc < 0) return rc;
    const int res = cqe->res;
    io_uring_cqe_seen(&ring, cqe);
    return res;
  };
  if (int rc = run(true); rc != static_cast<int>(kBlock)) {
    cap = {false, rc < 0 ? errno_text("io_uring write", -rc) : fmt::format("io_uring write: short ({} bytes)", rc)};
  } else if (rc = run(false); rc != static_cast<int>(kBlock)) {
    cap = {false, rc < 0 ? errno_text("io_uring read", -rc) : fmt::format("io_uring read: short ({} bytes)", rc)};
  } else if (std::memcmp(wbuf, rbuf, kBlock) != 0) {
    cap = {false, "io_uring read returned different bytes"};
  }
  io_uring_queue_exit(&ring);
  return cap;
}

}  // namespace

DirectoryProbe probe_directory(const std::string& dir) {
  DirectoryProbe p;
  p.dir = dir;
  if (struct statvfs vfs {}; ::statvfs(dir.c_str(), &vfs) == 0) {
    p.free_bytes = static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    p.total_bytes = static_cast<std::uint64_t>(vfs.f_blocks) * vfs.f_frsize;
  }
  if (struct statfs fs {}; ::statfs(dir.c_str(), &fs) == 0) p.filesystem = filesystem_name(fs.f_type);

  auto wbuf = AlignedBuffer::allocate(kBlock, kBlock);
  auto rbuf = AlignedBuffer::allocate(kBlock, kBlock);
  if (!wbuf || !rbuf) {
    p.o_direct = p.io_uring = {false, "cannot allocate a 4 KiB aligned buffer"};
    return p;
  }
  for (std::size_t i = 0; i < kBlock; ++i) wbuf->data()[i] = static_cast<std::byte>(i * 131 + 7);

  std::string path = dir + "/.strata-probe-XXXXXX";
  int fd = ::mkstemp(path.data());
  if (fd < 0) {
    p.o_direct = p.io_uring = {false, errno_text("cannot create a file here", errno)};
    return p;
  }
  ::close(fd);
  fd = ::open(path.c_str(), O_RDWR | O_DIRECT);
  if (fd < 0) {
    p.o_direct = {false, errno_text("open(O_DIRECT)", errno)};
    p.io_uring = {false, "needs O_DIRECT"};
  } else {
    ssize_t w = ::pwrite(fd, wbuf->data(), kBlock, 0);
    ssize_t r = w == static_cast<ssize_t>(kBlock) ? ::pread(fd, rbuf->data(), kBlock, 0) : -1;
    if (w != static_cast<ssize_t>(kBlock)) p.o_direct = {false, errno_text("aligned pwrite", errno)};
    else if (r != static_cast<ssize_t>(kBlock)) p.o_direct = {false, errno_text("aligned pread", errno)};
    else if (std::memcmp(wbuf->data(), rbuf->data(), kBlock) != 0) p.o_direct = {false, "read back different bytes"};
    else p.o_direct = {true, "aligned 4 KiB pwrite/pread round trip"};
    rbuf->zero();
    p.io_uring = uring_roundtrip(fd, wbuf->data(), rbuf->data());
    ::close(fd);
  }
  ::unlink(path.c_str());
  return p;
}

}  // namespace strata::io
