// On-disk layout of swap files. Not a public header; docs/architecture.md describes
// the format for people.
//
// Note [swap file layout]:
//
//   offset 0        file header, one 4 KiB block (FileHeader, zero padded)
//   offset 4096     record slot 0: record header block (4 KiB) | payload, padded to 4 KiB
//   ...             record slot 1, 2, ... in reservation order
//
// Every slot starts and ends on a 4 KiB boundary, so a record's header and payload go
// to disk as one O_DIRECT write of adjacent ranges, and a payload read can land
// straight in a caller's aligned buffer. A slot is sized by the reserved capacity, so
// rewriting a record never moves it. All integers are little-endian; the structs are
// copied byte for byte, which is only correct on little-endian hosts (asserted).
//
// Note [record verification]: a read is accepted only if, in this order,
//   1. the header block has the record magic and version, and the XXH3-64 of the whole
//      block (padding included) matches (a torn, flipped or overwritten header);
//   2. the header's run id is this store's (a record left by another run);
//   3. the key is the one asked for (a misplaced slot);
//   4. the generation is the one the store last wrote successfully (a stale record:
//      a lost or reverted write);
//   5. the length is the one last written;
//   6. the payload's XXH3-64 matches the header's (a flipped or torn payload).
// Each failure is kDataLoss naming the file, the slot's offset and length, and what
// differed. The store never returns a payload that failed any check.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "strata/base/status.h"

namespace strata::io::detail {

static_assert(std::endian::native == std::endian::little, "swap files are little-endian");

inline constexpr std::size_t kBlock = 4096;
inline constexpr std::uint32_t kSwapFormatVersion = 1;
inline constexpr char kFileMagic[8] = {'S', 'T', 'R', 'A', 'T', 'A', 'S', 'W'};
inline constexpr char kRecordMagic[8] = {'S', 'T', 'R', 'A', 'T', 'A', 'R', 'C'};

struct FileHeader {
  char magic[8];
  std::uint32_t version;
  std::uint32_t header_bytes;  // kBlock
  std::uint64_t run_id;
  std::uint64_t created_unix_ns;
  std::uint32_t pid;
  std::int32_t rank;
  std::uint8_t kind;
  std::uint8_t pad[7];
  char job[64];  // NUL padded, truncated
  std::uint64_t checksum;  // XXH3-64 of the whole 4 KiB block, this field read as 0
};
static_assert(sizeof(FileHeader) == 120);  // no implicit padding: every byte is checksummed

struct RecordHeader {
  char magic[8];
  std::uint32_t version;
  std::uint8_t kind;
  std::uint8_t pad[3];
  std::uint64_t run_id;
  std::uint64_t chunk;
  std::uint32_t tensor;
  std::uint32_t pad2;
  std::uint64_t length;      // payload bytes
  std::uint64_t capacity;    // reserved payload bytes
  std::uint64_t generation;  // 1 for the first put, +1 per put
  std::uint64_t payload_checksum;
  std::uint64_t checksum;  // XXH3-64 of the whole 4 KiB block, this field read as 0
};
static_assert(sizeof(RecordHeader) == 80);

std::uint64_t checksum(std::span<const std::byte> bytes);

// Fills the checksum and writes the header at the start of a zeroed kBlock block.
void encode(const FileHeader& h, std::span<std::byte> block);
void encode(const RecordHeader& h, std::span<std::byte> block);

// Reads a header from a whole kBlock block; checks magic, version and the header checksum. On
// failure the message says which (the caller adds path and offset).
Result<FileHeader> decode_file_header(std::span<const std::byte> block);
Result<RecordHeader> decode_record_header(std::span<const std::byte> block);

// Bytes a record of `capacity` payload bytes takes in the file.
inline std::uint64_t slot_bytes(std::uint64_t capacity) { return kBlock + (capacity + kBlock - 1) / kBlock * kBlock; }

}  // namespace strata::io::detail
