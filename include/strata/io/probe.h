// What the I/O path can use in a directory: io_uring, O_DIRECT, free space.
//
//   auto p = strata::io::probe_directory("/mnt/nvme");
//   if (!p.o_direct.ok) log::warn("no O_DIRECT in {}: {}", p.dir, p.o_direct.detail);
//
// The probe does real work, not feature tests on headers: it writes and reads back a
// 4 KiB block with O_DIRECT (through io_uring when that initialises), then removes
// its file. strata env prints the result; the file engine uses it to pick a backend.
#pragma once

#include <cstdint>
#include <string>

namespace strata::io {

struct Capability {
  bool ok = false;
  std::string detail;  // why not, or what was checked
};

struct DirectoryProbe {
  std::string dir;
  std::string filesystem;  // "ext4", "xfs", "tmpfs", ... or the magic number
  Capability io_uring;     // a ring initialises and completes an O_DIRECT read and write
  Capability o_direct;     // open(O_DIRECT) plus an aligned pwrite/pread round trip
  std::uint64_t free_bytes = 0;
  std::uint64_t total_bytes = 0;
};

DirectoryProbe probe_directory(const std::string& dir);

}  // namespace strata::io
