// ShardFile: one rank's checkpoint data file. Records (one tensor shard each) are
// appended back to back; each is checksummed in fixed 1 MiB blocks (XXH3-64), and the
// file by the XXH3-64 of all its block checksums in order (file_checksum), so a reader
// can verify exactly the bytes it reads and a verifier the whole file.
//
//   STRATA_ASSIGN_OR_RETURN(auto w, ShardFileWriter::create(path));
//   STRATA_ASSIGN_OR_RETURN(RecordSpan r, w.append(bytes));    // any number of times
//   STRATA_ASSIGN_OR_RETURN(FileSum f, w.finish());           // flushed and fsynced
//   ...
//   STRATA_ASSIGN_OR_RETURN(auto rd, ShardFileReader::open(path, f.bytes));
//   STRATA_RETURN_IF_ERROR(rd.read(r, /*offset=*/0, out));      // blocks it touches verified
//
// Errors name the file: ENOSPC is kNoSpace, a short file kDataLoss ("truncated"), a
// block whose checksum differs kDataLoss with the block's offset.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "strata/base/status.h"

namespace strata::io {
class FaultInjector;
}

namespace strata::ckpt {

inline constexpr std::uint64_t kBlockBytes = 1 << 20;

// Where a record lies in its file, and its blocks' checksums (the last block may be short).
struct RecordSpan {
  std::uint64_t offset = 0;
  std::uint64_t bytes = 0;
  std::vector<std::uint64_t> blocks;
};

struct FileSum {
  std::uint64_t bytes = 0;
  std::uint64_t xxh3 = 0;  // file_checksum of its blocks
};

std::uint64_t xxh3(std::span<const std::byte> bytes);
// A file's checksum: XXH3-64 of every record's block checksums, in file order, as
// little-endian 64-bit words. It covers every byte, and costs no second pass.
std::uint64_t file_checksum(std::span<const std::uint64_t> block_sums);

class ShardFileWriter {
 public:
  // `expect_bytes`, when known, is allocated up front (fallocate): appending O_DIRECT
  // writes then run in parallel instead of one extending write at a time, and a full
  // disk fails here.
  // `buffer_bytes`: each of the 4 staging buffers (a multiple of 4 KiB; Note
  // [checkpoint writes]).
  // `faults`: tests only (io/fault_injection.h), handed to the writer's io engine.
  static Result<ShardFileWriter> create(std::string path, std::uint64_t expect_bytes = 0, std::size_t buffer_bytes = 8u << 20,
                                        std::shared_ptr<io::FaultInjector> faults = nullptr);
  ShardFileWriter(ShardFileWriter&&) noexcept;
  ShardFileWriter& operator=(ShardFileWriter&&) noexcept;
  ~ShardFileWriter();

  Result<RecordSpan> append(std::span<const std::byte> bytes);
  // Everything written and fsynced; the file is closed.
  Result<FileSum> finish();
  const std::string& path() const;

 private:
  struct State;
  explicit ShardFileWriter(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

class ShardFileReader {
 public:
  // Fails (kNotFound, kDataLoss "truncated") unless the file has exactly `bytes` bytes.
  static Result<ShardFileReader> open(std::string path, std::uint64_t bytes);
  ShardFileReader(ShardFileReader&&) noexcept;
  ShardFileReader& operator=(ShardFileReader&&) noexcept;
  ~ShardFileReader();

  // out.size() bytes of record r from byte `offset` of the record; every block the
  // range touches is read whole and verified.
  Status read(const RecordSpan& r, std::uint64_t offset, std::span<std::byte> out);
  // The whole file's checksum, and every record's blocks, read sequentially.
  Status verify(const FileSum& sum, std::span<const RecordSpan> records);
  const std::string& path() const;

 private:
  struct State;
  explicit ShardFileReader(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

}  // namespace strata::ckpt
