#include "strata/base/units.h"

#include <gtest/gtest.h>

namespace strata {
namespace {

TEST(Units, ParsesDecimalBinaryAndExponentForms) {
  EXPECT_EQ(parse_size("64MiB").value(), 64ull << 20);
  EXPECT_EQ(parse_size("1.5GB").value(), 1'500'000'000ull);
  EXPECT_EQ(parse_size("5e8").value(), 500'000'000ull);
  EXPECT_EQ(parse_size("4k").value(), 4000ull);
  EXPECT_EQ(parse_size("4KiB").value(), 4096ull);
  EXPECT_EQ(parse_size(" 2 gib ").value(), 2ull << 30);
  EXPECT_EQ(parse_size("1.5KiB").value(), 1536ull);
  EXPECT_EQ(parse_size("123").value(), 123ull);
  EXPECT_EQ(parse_size("0").value(), 0ull);
  EXPECT_EQ(parse_size("1.1e9").value(), 1'100'000'000ull);
  EXPECT_EQ(parse_size("16EiB").has_value(), false);  // 2^64 does not fit
  EXPECT_EQ(parse_size("15EiB").has_value(), false);  // no E prefix: unknown unit
  EXPECT_EQ(parse_size("8TiB").value(), 8ull << 40);
}

TEST(Units, RejectsGarbageWithAReason) {
  for (const char* bad : {"", "MiB", "12 parsecs", "-1", "0.5B", "1e30", "nan", "1.5.5G"}) {
    auto r = parse_size(bad);
    EXPECT_FALSE(r) << bad;
    if (!r) {
      EXPECT_FALSE(r.error().message().empty());
    }
  }
}

TEST(Units, FormatsBytesCountsAndRates) {
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(1024), "1.0 KiB");
  EXPECT_EQ(format_bytes(64ull << 20), "64.0 MiB");
  EXPECT_EQ(format_bytes(3ull << 29), "1.5 GiB");
  EXPECT_EQ(format_count(999), "999");
  EXPECT_EQ(format_count(124'439'808), "124.4M");
  EXPECT_EQ(format_count(7'000'000'000), "7.0B");
  EXPECT_EQ(format_rate(2.5e9), "2.50 GB/s");
}

TEST(Units, FormatThenParseRoundTripsBinarySizes) {
  for (std::uint64_t v : {1ull << 10, 3ull << 20, 5ull << 30}) {
    std::string s = format_bytes(v);
    s.erase(std::remove(s.begin(), s.end(), ' '), s.end());
    EXPECT_EQ(parse_size(s).value(), v) << s;
  }
}

}  // namespace
}  // namespace strata
