// The arithmetic behind `strata bench zero3 --largest` (apps/strata/largest_search.h):
// strata's capacity and its split of optimizer state between RAM and disk, against a
// brute force over the split; the search against a brute force over the layer count.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "../apps/strata/largest_search.h"

namespace strata::cli {
namespace {

// The most parameters N for which some h <= N elements' state on host fits:
// 8 h + 2 (N - h) <= host and 8 (N - h) <= disk.
std::uint64_t brute_capacity(std::uint64_t host, std::uint64_t disk) {
  std::uint64_t best = 0;
  for (std::uint64_t n = 0; n <= host; ++n)
    for (std::uint64_t h = 0; h <= n; ++h)
      if (8 * h + 2 * (n - h) <= host && 8 * (n - h) <= disk) best = std::max(best, n);
  return best;
}

TEST(LargestSearch, CapacityAndSplitMatchBruteForce) {
  for (std::uint64_t host : {0u, 7u, 10u, 40u, 97u, 200u}) {
    for (std::uint64_t disk : {0u, 9u, 10u, 55u, 300u, 2000u}) {
      const std::uint64_t n = strata_capacity(host, disk);
      EXPECT_EQ(n, brute_capacity(host, disk)) << "host " << host << " disk " << disk;
      // The split the attempt is configured with fits the machine it was sized for.
      // The split the attempt is configured with fits the machine, for every model
      // that fits it: whenever some split fits, the chosen one does.
      for (std::uint64_t m = 0; m <= n; ++m) {
        const std::uint64_t h = strata_state_in_cpu(m, host, disk);
        ASSERT_LE(h, m);
        EXPECT_LE(8 * h + 2 * (m - h), host) << "host " << host << " disk " << disk << " params " << m;
        EXPECT_LE(8 * (m - h), disk) << "host " << host << " disk " << disk << " params " << m;
      }
    }
  }
  // A model that fits in RAM keeps all of its state there.
  EXPECT_EQ(strata_state_in_cpu(12, 100, 1000), 12u);
  // Between the most the RAM holds (h 11: 88 + 2 * 4 <= 100) and the least the disk
  // allows (h 3: 8 * 12 <= 100): the middle, 7.
  EXPECT_EQ(strata_state_in_cpu(15, 100, 100), 7u);
  // None fits: as much as the RAM holds.
  EXPECT_EQ(strata_state_in_cpu(15, 100, 0), 11u);
  EXPECT_EQ(strata_state_in_cpu(50, 100, 1000), 0u);
  EXPECT_EQ(fsdp2_capacity(160), 10u);
}

TEST(LargestSearch, AnAttemptLeavesAFixedReserveFree) {
  constexpr std::uint64_t GiB = std::uint64_t{1} << 30;
  EXPECT_EQ(usable_ram(128 * GiB), 120 * GiB);  // 8 GiB: more than a sixteenth
  EXPECT_EQ(usable_ram(256 * GiB), 240 * GiB);  // a sixteenth
  EXPECT_EQ(usable_ram(4 * GiB), 0u);
  EXPECT_EQ(usable_disk(50 * GiB), 48 * GiB);
  EXPECT_EQ(usable_disk(1000 * GiB), 980 * GiB);
  EXPECT_EQ(usable_disk(GiB), 0u);
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

// The attempt runs as the OOM killer's first choice, with its arguments intact.
TEST(LargestSearch, AnAttemptRaisesItsOwnOomScoreAndKeepsItsArguments) {
  const auto argv = as_oom_victim({"/bin/sh", "-c", "cat /proc/self/oom_score_adj; echo \"$1|$2\"", "sh", "a b", "$c"});
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::dup2(fds[1], 1);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string out;
  char buf[256];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out;
  EXPECT_EQ(out, "1000\na b|$c\n");
}

}  // namespace
}  // namespace strata::cli
