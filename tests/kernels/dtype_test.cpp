#include "strata/kernels/dtype.h"

#include <bit>
#include <cmath>
#include <limits>

#include <gtest/gtest.h>

namespace strata::kernels {
namespace {

std::uint32_t bits(float f) { return std::bit_cast<std::uint32_t>(f); }
float from_bits(std::uint32_t b) { return std::bit_cast<float>(b); }

TEST(DType, NamesAndParsing) {
  EXPECT_EQ(dtype_name(DType::kF32), "fp32");
  EXPECT_EQ(dtype_name(DType::kBF16), "bf16");
  EXPECT_EQ(dtype_name(DType::kF16), "fp16");
  EXPECT_EQ(dtype_size(DType::kF32), 4u);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(*parse_dtype("BFloat16"), DType::kBF16);
  EXPECT_EQ(*parse_dtype("half"), DType::kF16);
  EXPECT_EQ(*parse_dtype("float32"), DType::kF32);
  auto bad = parse_dtype("fp8");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("fp8"), std::string::npos);
}

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(bf16_from_f32(1.0f), 0x3F80);
  EXPECT_EQ(bf16_from_f32(from_bits(0x3F808000)), 0x3F80);  // tie, even below: down
  EXPECT_EQ(bf16_from_f32(from_bits(0x3F818000)), 0x3F82);  // tie, odd below: up
  EXPECT_EQ(bf16_from_f32(from_bits(0x3F808001)), 0x3F81);  // above the tie: up
  EXPECT_EQ(bf16_from_f32(from_bits(0x3F807FFF)), 0x3F80);  // below the tie: down
  EXPECT_EQ(bf16_from_f32(from_bits(0x7F7FFFFF)), 0x7F80);  // FLT_MAX rounds to inf
  EXPECT_EQ(bf16_from_f32(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(bf16_from_f32(from_bits(0x00018000)), 0x0002);  // subnormals are kept, not flushed
  EXPECT_EQ(bf16_from_f32(-0.0f), 0x8000);
  // NaN stays NaN (quiet), also when rounding would carry into the exponent.
  for (std::uint32_t nan : {0x7FC00000u, 0x7F800001u, 0x7FFFFFFFu, 0xFFFFFFFFu, 0xFF800001u}) {
    const std::uint16_t h = bf16_from_f32(from_bits(nan));
    EXPECT_TRUE(std::isnan(f32_from_bf16(h))) << std::hex << nan;
    EXPECT_EQ(h & 0x8000, (nan >> 16) & 0x8000);
  }
}

TEST(DType, EveryBf16RoundTrips) {
  for (std::uint32_t b = 0; b <= 0xFFFF; ++b) {
    const float f = f32_from_bf16(static_cast<std::uint16_t>(b));
    EXPECT_EQ(bits(f), b << 16);
    if (!std::isnan(f)) {
      EXPECT_EQ(bf16_from_f32(f), b);
    }
  }
}

TEST(DType, EveryFp16RoundTrips) {
  for (std::uint32_t b = 0; b <= 0xFFFF; ++b) {
    const float f = f32_from_f16(static_cast<std::uint16_t>(b));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f32_from_f16(f16_from_f32(f)))) << std::hex << b;
    } else {
      EXPECT_EQ(f16_from_f32(f), b) << std::hex << b;
    }
  }
  EXPECT_EQ(f32_from_f16(0x3C00), 1.0f);
  EXPECT_EQ(f32_from_f16(0x7BFF), 65504.0f);
  EXPECT_EQ(f32_from_f16(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f32_from_f16(0xFC00), -std::numeric_limits<float>::infinity());
}

TEST(DType, Fp16RoundsToNearestEven) {
  EXPECT_EQ(f16_from_f32(65504.0f), 0x7BFF);
  EXPECT_EQ(f16_from_f32(65519.99f), 0x7BFF);
  EXPECT_EQ(f16_from_f32(65520.0f), 0x7C00);  // the tie rounds to even, which is inf
  EXPECT_EQ(f16_from_f32(1e10f), 0x7C00);
  EXPECT_EQ(f16_from_f32(-1e10f), 0xFC00);
  EXPECT_EQ(f16_from_f32(1.0f + std::ldexp(1.0f, -11)), 0x3C00);      // tie, even below
  EXPECT_EQ(f16_from_f32(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);  // tie, odd below
  EXPECT_EQ(f16_from_f32(std::ldexp(1.0f, -25)), 0x0000);             // half the smallest subnormal: even
  EXPECT_EQ(f16_from_f32(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(f16_from_f32(std::ldexp(3.0f, -25)), 0x0002);             // 1.5 ulp: tie, up to even
  EXPECT_EQ(f16_from_f32(std::ldexp(1.0f, -14) * (1 - std::ldexp(1.0f, -12))), 0x0400);  // up to normal
  EXPECT_EQ(f16_from_f32(-0.0f), 0x8000);
  EXPECT_EQ(f16_from_f32(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_EQ(f16_from_f32(from_bits(0x7FC00000)), 0x7E00);
  EXPECT_EQ(f16_from_f32(from_bits(0xFF800001)), 0xFE00);  // signalling NaN comes out quiet
}

}  // namespace
}  // namespace strata::kernels
