// Byte sizes and counts, as people write them.
//
//   parse_size("64MiB")  -> 67108864        parse_size("1.5GB") -> 1500000000
//   parse_size("5e8")    -> 500000000       parse_size("4k")    -> 4000
//   format_bytes(67108864) -> "64.0 MiB"    format_count(124439808) -> "124.4M"
//
// Suffixes K, M, G, T, P (optionally followed by B) are powers of 1000; Ki, Mi, Gi,
// Ti, Pi (optionally followed by B) are powers of 1024. Case does not matter. The
// result must be a whole number: "1.5KiB" is 1536, "0.3B" is an error.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "strata/base/status.h"

namespace strata {

Result<std::uint64_t> parse_size(std::string_view text);

// Binary units with one decimal: "512 B", "1.0 KiB", "64.0 MiB", "1.5 GiB".
std::string format_bytes(std::uint64_t bytes);
// Decimal units with one decimal: "999", "1.2K", "124.4M", "7.0B".
std::string format_count(std::uint64_t n);
// Rates: "1.23 GB/s" (decimal, as disks and fio report them).
std::string format_rate(double bytes_per_second);

}  // namespace strata
