#include "swap_format.h"

#include <xxhash.h>

#include <cstddef>
#include <cstring>

namespace strata::io::detail {
namespace {

// The checksum covers the whole block with the checksum field read as zero, so a flip
// anywhere in the block — the padding too — is caught.
template <class H>
std::uint64_t block_checksum(std::span<const std::byte> block) {
  std::byte copy[kBlock];
  std::memcpy(copy, block.data(), kBlock);
  std::memset(copy + offsetof(H, checksum), 0, sizeof(std::uint64_t));
  return XXH3_64bits(copy, kBlock);
}

template <class H>
void encode_header(H h, std::span<std::byte> block) {
  h.checksum = 0;
  std::memset(block.data(), 0, kBlock);
  std::memcpy(block.data(), &h, sizeof h);
  const std::uint64_t sum = block_checksum<H>(block);
  std::memcpy(block.data() + offsetof(H, checksum), &sum, sizeof sum);
}

template <class H>
Result<H> decode_header(std::span<const std::byte> block, const char (&magic)[8], const char* what) {
  if (block.size() < kBlock) {
    return make_error(ErrorCode::kDataLoss, "{} is truncated ({} bytes)", what, block.size());
  }
  H h;
  std::memcpy(&h, block.data(), sizeof h);
  if (std::memcmp(h.magic, magic, sizeof h.magic) != 0) {
    return make_error(ErrorCode::kDataLoss, "{} has no valid magic (not written by strata, or overwritten)", what);
  }
  if (h.version != kSwapFormatVersion) {
    return make_error(ErrorCode::kDataLoss, "{} has format version {}, expected {}", what, h.version,
                      kSwapFormatVersion);
  }
  if (const std::uint64_t sum = block_checksum<H>(block); sum != h.checksum) {
    return make_error(ErrorCode::kDataLoss, "{} checksum mismatch: block hashes to {:016x}, header says {:016x}",
                      what, sum, h.checksum);
  }
  return h;
}

}  // namespace

std::uint64_t checksum(std::span<const std::byte> bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

void encode(const FileHeader& h, std::span<std::byte> block) { encode_header(h, block); }
void encode(const RecordHeader& h, std::span<std::byte> block) { encode_header(h, block); }

Result<FileHeader> decode_file_header(std::span<const std::byte> block) {
  return decode_header<FileHeader>(block, kFileMagic, "swap file header");
}

Result<RecordHeader> decode_record_header(std::span<const std::byte> block) {
  return decode_header<RecordHeader>(block, kRecordMagic, "record header");
}

}  // namespace strata::io::detail
