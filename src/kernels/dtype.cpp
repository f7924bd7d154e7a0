#include "strata/kernels/dtype.h"

#include <algorithm>
#include <bit>
#include <cctype>
#include <cmath>
#include <string>

namespace strata::kernels {

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "fp32";
    case DType::kBF16: return "bf16";
    case DType::kF16: return "fp16";
  }
  return "unknown";
}

Result<DType> parse_dtype(std::string_view name) {
  std::string s(name);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  if (s == "fp32" || s == "float32" || s == "f32" || s == "float") return DType::kF32;
  if (s == "bf16" || s == "bfloat16") return DType::kBF16;
  if (s == "fp16" || s == "float16" || s == "f16" || s == "half") return DType::kF16;
  return make_error(ErrorCode::kInvalidArgument, "unknown dtype '{}'; choose fp32, bf16 or fp16", name);
}

// These are the references the SIMD conversions are tested against. The fp16 ones are
// deliberately written differently from the vector versions (value arithmetic in double
// here, bit tricks there), so that a shared mistake is unlikely.

std::uint16_t bf16_from_f32(float f) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
  if (std::isnan(f)) return static_cast<std::uint16_t>((bits >> 16) | 0x40);  // quiet, sign and payload kept
  const std::uint32_t lsb = (bits >> 16) & 1;
  return static_cast<std::uint16_t>((bits + 0x7FFF + lsb) >> 16);
}

float f32_from_bf16(std::uint16_t bits) { return std::bit_cast<float>(std::uint32_t{bits} << 16); }

std::uint16_t f16_from_f32(float f) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000);
  if (std::isnan(f)) return static_cast<std::uint16_t>(sign | 0x7E00 | ((bits >> 13) & 0x3FF));
  const double x = std::fabs(static_cast<double>(f));
  // 65520 is halfway between 65504 (the largest fp16) and 65536; ties go to even = inf.
  if (x >= 65520.0) return static_cast<std::uint16_t>(sign | 0x7C00);
  if (x < 0x1p-14) {
    // Subnormal range: the value in units of 2^-24, rounded to nearest even. A result
    // of 1024 is the smallest normal number, whose encoding is the same 0x0400.
    const double q = std::nearbyint(x * 0x1p24);  // default rounding mode: to nearest even
    return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(q));
  }
  int e = 0;
  const double frac = std::frexp(x, &e);      // x = frac * 2^e, frac in [0.5, 1)
  int exp = e - 1;                             // x = (2 * frac) * 2^exp, 2*frac in [1, 2)
  double mant = std::nearbyint((2 * frac - 1) * 1024);  // 10 fraction bits, RNE
  if (mant == 1024) {                          // rounded up into the next binade
    mant = 0;
    ++exp;
  }
  return static_cast<std::uint16_t>(sign | ((exp + 15) << 10) | static_cast<int>(mant));
}

float f32_from_f16(std::uint16_t bits) {
  const bool neg = (bits & 0x8000) != 0;
  const int exp = (bits >> 10) & 0x1F;
  const int mant = bits & 0x3FF;
  if (exp == 0x1F) {  // inf, or NaN: payload kept in the top fraction bits, made quiet (as F16C does)
    std::uint32_t out = (neg ? 0x80000000u : 0u) | 0x7F800000u | (static_cast<std::uint32_t>(mant) << 13);
    if (mant != 0) out |= 0x00400000u;
    return std::bit_cast<float>(out);
  }
  const double mag = exp == 0 ? std::ldexp(mant, -24) : std::ldexp(1024 + mant, exp - 25);
  return static_cast<float>(neg ? -mag : mag);
}

}  // namespace strata::kernels
