// The arithmetic behind `strata bench zero3 --largest` (apps/strata/largest_search.h):
// strata's capacity and its split of optimizer state between RAM and disk, against a
// brute force over the split; the search against a brute force over the layer count.
#include <algorithm>

#include <gtest/gtest.h>

#include "../apps/strata/largest_search.h"

namespace strata::cli {
namespace {

// The most parameters N for which some h <= N elements' state on host fits:
// 10 h + 2 (N - h) <= host and 10 (N - h) <= disk.
std::uint64_t brute_capacity(std::uint64_t host, std::uint64_t disk) {
  std::uint64_t best = 0;
  for (std::uint64_t n = 0; n <= host; ++n)
    for (std::uint64_t h = 0; h <= n; ++h)
      if (10 * h + 2 * (n - h) <= host && 10 * (n - h) <= disk) best = std::max(best, n);
  return best;
}

TEST(LargestSearch, CapacityAndSplitMatchBruteForce) {
  for (std::uint64_t host : {0u, 7u, 10u, 40u, 97u, 200u}) {
    for (std::uint64_t disk : {0u, 9u, 10u, 55u, 300u, 2000u}) {
      const std::uint64_t n = strata_capacity(host, disk);
      EXPECT_EQ(n, brute_capacity(host, disk)) << "host " << host << " disk " << disk;
      // The split the attempt is configured with fits the machine it was sized for.
      const std::uint64_t h = strata_state_in_cpu(n, host);
      ASSERT_LE(h, n);
      EXPECT_LE(10 * h + 2 * (n - h), host) << "host " << host << " disk " << disk;
      EXPECT_LE(10 * (n - h), disk) << "host " << host << " disk " << disk;
    }
  }
  // RAM first: a model that fits in RAM keeps all of its state there.
  EXPECT_EQ(strata_state_in_cpu(10, 100), 10u);
  EXPECT_EQ(strata_state_in_cpu(50, 100), 0u);
  EXPECT_EQ(fsdp2_capacity(160), 10u);
}

TEST(LargestSearch, FindsTheLargestThatTrainsWithEnoughAttempts) {
  for (int start : {1, 5, 30, 90})
    for (int fits : {1, 4, 29, 30, 31, 64}) {
      auto s = search_largest(start, 40, [&](int layers) -> Result<bool> { return layers <= fits; });
      ASSERT_TRUE(s.has_value());
      EXPECT_EQ(s->largest_fit, fits) << "start " << start;
      EXPECT_EQ(s->smallest_miss, fits + 1) << "start " << start;
    }
  auto none = search_largest(3, 40, [](int) -> Result<bool> { return false; });
  ASSERT_TRUE(none.has_value());
  EXPECT_EQ(none->largest_fit, 0);
}

}  // namespace
}  // namespace strata::cli
