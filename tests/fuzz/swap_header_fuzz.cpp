// libFuzzer target: the swap file and record header decoders, which read whatever a
// crashed or foreign run left on disk (Note [swap directory lock]).
//
// Input: one mode byte, then the header block's bytes (zero padded to 4 KiB, as on
// disk). Mode bit 0 picks the record header over the file header; bit 1 fixes up the
// block's checksum first, so that the fuzzer reaches the field checks behind it (a
// random block almost never has a valid XXH3). A header that decodes must encode back
// to a block that decodes to the same header.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "io/swap_format.h"

namespace {

using namespace strata::io::detail;

template <class Header>
void fix_checksum(std::array<std::byte, kBlock>& block) {
  std::memset(block.data() + offsetof(Header, checksum), 0, sizeof(std::uint64_t));
  const std::uint64_t sum = checksum(block);
  std::memcpy(block.data() + offsetof(Header, checksum), &sum, sizeof sum);
}

template <class Header, class Decode>
void round_trip(const std::array<std::byte, kBlock>& block, Decode decode) {
  auto h = decode(std::span<const std::byte>(block));
  if (!h) return;
  std::array<std::byte, kBlock> again{};
  encode(*h, again);
  auto h2 = decode(std::span<const std::byte>(again));
  if (!h2) __builtin_trap();
  // The checksums differ when the original block had bytes past the header (encode
  // zeroes them); every field else must match.
  Header a = *h, b = *h2;
  a.checksum = b.checksum = 0;
  if (std::memcmp(&a, &b, sizeof(Header)) != 0) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t mode = data[0];
  std::array<std::byte, kBlock> block{};
  std::memcpy(block.data(), data + 1, std::min(size - 1, kBlock));
  if (mode & 1) {
    if (mode & 2) fix_checksum<RecordHeader>(block);
    round_trip<RecordHeader>(block, [](std::span<const std::byte> b) { return decode_record_header(b); });
  } else {
    if (mode & 2) fix_checksum<FileHeader>(block);
    round_trip<FileHeader>(block, [](std::span<const std::byte> b) { return decode_file_header(b); });
  }
  // The decoders take any span: a short one must be refused, not read past.
  (void)decode_record_header(std::span<const std::byte>(block).first(std::min(size, kBlock - 1)));
  return 0;
}
