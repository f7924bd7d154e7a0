#include "strata/kernels/cast.h"

#include <bit>
#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "kernel_test_util.h"
#include "kernels/reference.h"
#include "strata/base/thread_pool.h"

namespace strata::kernels {
namespace {

using testing::TestArray;

using testing::kAllDTypes;

// Random bit patterns cover every class: normals, subnormals, zeros, inf and NaN (with
// payloads), plus values near the fp16 range where rounding overflows.
void fill_bits(TestArray& a, std::mt19937& rng) {
  std::uniform_int_distribution<std::uint32_t> u32;
  std::uniform_real_distribution<float> near_max(60000.0f, 70000.0f);
  for (std::size_t i = 0; i < a.size(); ++i) {
    const std::uint32_t r = u32(rng);
    if (a.dtype() != DType::kF32) {
      a.u16()[i] = static_cast<std::uint16_t>(r);
      continue;
    }
    switch (r % 4) {
      case 0: a.f32()[i] = std::bit_cast<float>(u32(rng)); break;                 // any pattern
      case 1: a.f32()[i] = std::ldexp(static_cast<float>(r % 4096) + 0.5f, -36 + static_cast<int>(r % 24)); break;
      case 2: a.f32()[i] = (r & 8 ? -1 : 1) * near_max(rng); break;
      default: a.f32()[i] = std::bit_cast<float>((r & 0x80000000u) | (0x38000000u + (r >> 8) % 0x1000000u)); break;
    }
  }
}

TEST(Cast, EveryTargetMatchesTheScalarReferenceBitForBit) {
  std::mt19937 rng(7);
  for (const std::string& target : testing::all_targets()) {
    testing::ScopedTarget scoped(target);
    for (DType from : kAllDTypes) {
      for (DType to : kAllDTypes) {
        for (std::size_t n : testing::tail_sizes()) {
          for (std::size_t off : {0u, 1u, 3u}) {
            SCOPED_TRACE(::testing::Message() << target << " " << dtype_name(from) << "->" << dtype_name(to)
                                              << " n=" << n << " offset=" << off);
            TestArray src(from, n, off), dst(to, n, (off + 1) % 4), want(to, n, 0);
            fill_bits(src, rng);
            ASSERT_TRUE(cast(src.data(), from, dst.data(), to, n));
            detail::cast_reference(src.data(), from, want.data(), to, n);
            ASSERT_TRUE(dst.same_bits(want, "cast"));
          }
        }
      }
    }
  }
}

TEST(Cast, EverySixteenBitPatternWidensExactlyOnEveryTarget) {
  TestArray src16(DType::kBF16, 65536, 1);
  for (std::uint32_t b = 0; b < 65536; ++b) src16.u16()[b] = static_cast<std::uint16_t>(b);
  for (const std::string& target : testing::all_targets()) {
    testing::ScopedTarget scoped(target);
    for (DType t : {DType::kBF16, DType::kF16}) {
      SCOPED_TRACE(::testing::Message() << target << " " << dtype_name(t));
      TestArray wide(DType::kF32, 65536, 0), want(DType::kF32, 65536, 0), back(t, 65536, 0);
      ASSERT_TRUE(cast(src16.data(), t, wide.data(), DType::kF32, 65536));
      detail::cast_reference(src16.data(), t, want.data(), DType::kF32, 65536);
      ASSERT_TRUE(wide.same_bits(want, "widen"));
      // ... and narrowing back is exact for every non-NaN value.
      ASSERT_TRUE(cast(wide.data(), DType::kF32, back.data(), t, 65536));
      for (std::uint32_t b = 0; b < 65536; ++b) {
        if (!std::isnan(wide.f32()[b])) ASSERT_EQ(back.u16()[b], b) << std::hex << b;
        else ASSERT_TRUE(std::isnan(back.get(b))) << std::hex << b;
      }
    }
  }
}

TEST(Cast, ThreadedCastEqualsSingleThreaded) {
  std::mt19937 rng(11);
  ThreadPool pool(3);
  const std::size_t n = 300'007;
  TestArray src(DType::kF32, n, 1), one(DType::kBF16, n, 3), many(DType::kBF16, n, 3);
  fill_bits(src, rng);
  ASSERT_TRUE(cast(src.data(), DType::kF32, one.data(), DType::kBF16, n));
  ASSERT_TRUE(cast(src.data(), DType::kF32, many.data(), DType::kBF16, n, &pool));
  EXPECT_TRUE(many.same_bits(one, "threaded cast"));
  TestArray copy(DType::kF32, n, 2);
  ASSERT_TRUE(cast(src.data(), DType::kF32, copy.data(), DType::kF32, n, &pool));
  EXPECT_TRUE(copy.same_bits(src, "same-dtype copy"));
}

TEST(Cast, FillWritesTheRoundedValue) {
  ThreadPool pool(2);
  TestArray a(DType::kBF16, 100'000, 1), b(DType::kF32, 5, 0), h(DType::kF16, 33, 3);
  ASSERT_TRUE(fill(a.data(), DType::kBF16, a.size(), 0.1f, &pool));
  ASSERT_TRUE(fill(b.data(), DType::kF32, b.size(), -2.5f));
  ASSERT_TRUE(fill(h.data(), DType::kF16, h.size(), 1e6f));
  for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a.u16()[i], bf16_from_f32(0.1f));
  for (std::size_t i = 0; i < b.size(); ++i) EXPECT_EQ(b.f32()[i], -2.5f);
  for (std::size_t i = 0; i < h.size(); ++i) EXPECT_EQ(h.u16()[i], 0x7C00);
}

TEST(Cast, RejectsNullPointersAndUnknownDtypes) {
  float x = 0;
  auto st = cast(nullptr, DType::kF32, &x, DType::kBF16, 4);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(st.error().message().find("src"), std::string::npos);
  EXPECT_TRUE(cast(nullptr, DType::kF32, nullptr, DType::kBF16, 0));  // nothing to do
  EXPECT_FALSE(cast(&x, static_cast<DType>(9), &x, DType::kF32, 1));
  EXPECT_FALSE(fill(nullptr, DType::kF16, 3, 0.0f));
}

}  // namespace
}  // namespace strata::kernels
