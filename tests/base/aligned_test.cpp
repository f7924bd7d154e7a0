#include "strata/base/aligned.h"

#include <cstdint>

#include <gtest/gtest.h>

namespace strata {
namespace {

TEST(AlignedBuffer, AllocatesAlignedAndMoves) {
  auto a = AlignedBuffer::allocate(10'000, 4096);
  ASSERT_TRUE(a);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a->data()) % 4096, 0u);
  EXPECT_EQ(a->size(), 10'000u);
  a->zero();
  a->as<std::uint8_t>()[9'999] = 7;
  AlignedBuffer b = std::move(*a);
  EXPECT_TRUE(a->empty());
  EXPECT_EQ(a->data(), nullptr);
  EXPECT_EQ(b.as<std::uint8_t>()[9'999], 7);
  AlignedBuffer c;
  c = std::move(b);
  EXPECT_EQ(c.size(), 10'000u);
}

TEST(AlignedBuffer, RejectsBadAlignmentAndHugeSizes) {
  EXPECT_FALSE(AlignedBuffer::allocate(64, 3));
  EXPECT_FALSE(AlignedBuffer::allocate(64, 2));
  auto huge = AlignedBuffer::allocate(std::size_t{1} << 62, 64);
  ASSERT_FALSE(huge);
  EXPECT_EQ(huge.error().code(), ErrorCode::kResourceExhausted);
  auto empty = AlignedBuffer::allocate(0, 64);
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->empty());
}

TEST(AlignedBuffer, RoundUp) {
  EXPECT_EQ(round_up(0, 4096), 0u);
  EXPECT_EQ(round_up(1, 4096), 4096u);
  EXPECT_EQ(round_up(4096, 4096), 4096u);
  EXPECT_EQ(round_up(10, 3), 12u);
}

}  // namespace
}  // namespace strata
