#include "strata/base/units.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <string>

namespace strata {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Multiplier for a unit suffix, or 0 if the suffix is not a unit.
double unit_multiplier(std::string_view unit) {
  std::string u;
  for (char c : unit) u += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (u.empty() || u == "b") return 1;
  if (u.back() == 'b') u.pop_back();  // "kb" == "k", "kib" == "ki"
  static constexpr std::string_view kPrefixes = "kmgtp";
  if (u.size() == 1 || (u.size() == 2 && u[1] == 'i')) {
    const auto pos = kPrefixes.find(u[0]);
    if (pos == std::string_view::npos) return 0;
    const double base = u.size() == 2 ? 1024.0 : 1000.0;
    return std::pow(base, static_cast<double>(pos + 1));
  }
  return 0;
}

}  // namespace

Result<std::uint64_t> parse_size(std::string_view text) {
  const std::string_view s = trim(text);
  if (s.empty()) return make_error(ErrorCode::kInvalidArgument, "empty size");
  const std::string buf(s);
  char* end = nullptr;
  const double value = std::strtod(buf.c_str(), &end);
  if (end == buf.c_str()) {
    return make_error(ErrorCode::kInvalidArgument, "'{}' is not a size (expected e.g. 64MiB, 1.5GB, 5e8)", s);
  }
  const double mult = unit_multiplier(trim(std::string_view(end)));
  if (mult == 0) {
    return make_error(ErrorCode::kInvalidArgument,
                      "'{}' has an unknown unit '{}' (use B, K/KB, M/MB, G/GB, T/TB or KiB, MiB, GiB, TiB)",
                      s, trim(std::string_view(end)));
  }
  if (!std::isfinite(value) || value < 0) {
    return make_error(ErrorCode::kOutOfRange, "'{}' must be a non-negative finite size", s);
  }
  const long double total = static_cast<long double>(value) * mult;
  if (total >= 18446744073709551616.0L) {
    return make_error(ErrorCode::kOutOfRange, "'{}' does not fit in 64 bits", s);
  }
  const long double whole = std::round(total);
  // Accept tiny float noise ("1.1e9" is not exactly representable) but not fractions.
  if (std::fabs(total - whole) > 1e-6L * std::max<long double>(1, whole)) {
    return make_error(ErrorCode::kInvalidArgument, "'{}' is not a whole number ({})", s,
                      static_cast<double>(total));
  }
  return static_cast<std::uint64_t>(whole);
}

std::string format_bytes(std::uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return fmt::format("{} B", bytes);
  double v = static_cast<double>(bytes);
  int unit = 0;
  while (v >= 1024 && unit < 6) {
    v /= 1024;
    ++unit;
  }
  return fmt::format("{:.1f} {}", v, kUnits[unit]);
}

std::string format_count(std::uint64_t n) {
  static constexpr const char* kUnits[] = {"", "K", "M", "B", "T", "P", "E"};
  if (n < 1000) return fmt::format("{}", n);
  double v = static_cast<double>(n);
  int unit = 0;
  while (v >= 1000 && unit < 6) {
    v /= 1000;
    ++unit;
  }
  return fmt::format("{:.1f}{}", v, kUnits[unit]);
}

std::string format_rate(double bytes_per_second) {
  if (bytes_per_second >= 1e9) return fmt::format("{:.2f} GB/s", bytes_per_second / 1e9);
  if (bytes_per_second >= 1e6) return fmt::format("{:.1f} MB/s", bytes_per_second / 1e6);
  return fmt::format("{:.1f} KB/s", bytes_per_second / 1e3);
}

}  // namespace strata
