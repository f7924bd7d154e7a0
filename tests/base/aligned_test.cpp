#include "strata/base/aligned.h"

#include <cstdint>
#include <cstdlib>

#include <gtest/gtest.h>

#include "support/smaps.h"

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

// Note [huge pages]: buffers that O_DIRECT moves ask for transparent huge pages.
TEST(AlignedBuffer, HugePagesAreAlignedAndAdvised) {
  auto a = AlignedBuffer::allocate(9 << 20, 4096, Pages::kHuge);
  ASSERT_TRUE(a);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a->data()) % AlignedBuffer::kHugePage, 0u);
  EXPECT_EQ(a->alignment(), AlignedBuffer::kHugePage);
  a->zero();
  auto small = AlignedBuffer::allocate(9 << 20, 4096);
  ASSERT_TRUE(small);
  small->zero();
  if (testing::thp_mode() != "madvise") GTEST_SKIP() << "THP is not in madvise mode: advice shows in no mapping";
  EXPECT_EQ(testing::thp_eligible(a->data()), std::optional<bool>(true));
  EXPECT_EQ(testing::thp_eligible(a->data() + a->size() - 1), std::optional<bool>(true));
  if (!testing::malloc_advises_huge_pages()) {
    EXPECT_EQ(testing::thp_eligible(small->data()), std::optional<bool>(false));
  }
}

TEST(AlignedBuffer, ReleaseHandsOverTheMemory) {
  auto a = AlignedBuffer::allocate(1 << 20, 4096, Pages::kHuge);
  ASSERT_TRUE(a);
  std::byte* p = a->release();
  EXPECT_TRUE(a->empty());
  EXPECT_EQ(a->data(), nullptr);
  p[0] = std::byte{1};
  std::free(p);
}

TEST(AlignedBuffer, RoundUp) {
  EXPECT_EQ(round_up(0, 4096), 0u);
  EXPECT_EQ(round_up(1, 4096), 4096u);
  EXPECT_EQ(round_up(4096, 4096), 4096u);
  EXPECT_EQ(round_up(10, 3), 12u);
}

}  // namespace
}  // namespace strata
