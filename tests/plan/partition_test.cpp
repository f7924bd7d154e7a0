// Partitioners: balance bounds on adversarial size distributions, checked against the
// optimum by brute force where it is cheap; determinism; the flat split.
#include <algorithm>
#include <numeric>
#include <random>

#include <gtest/gtest.h>

#include "strata/plan/partition.h"
#include "support/property_scale.h"

namespace strata::plan {
namespace {

using strata::testing::kPropertyScale;

std::vector<ParamInfo> of(std::initializer_list<std::uint64_t> sizes) {
  std::vector<ParamInfo> p;
  for (std::uint64_t s : sizes) p.push_back({.numel = s});
  return p;
}

// The best possible max load, by trying every assignment (small cases only).
std::uint64_t optimal_max_load(const std::vector<ParamInfo>& p, int world) {
  std::vector<int> assign(p.size(), 0);
  std::uint64_t best = UINT64_MAX;
  while (true) {
    std::vector<std::uint64_t> load(static_cast<std::size_t>(world), 0);
    for (std::size_t i = 0; i < p.size(); ++i) load[static_cast<std::size_t>(assign[i])] += p[i].numel;
    best = std::min(best, *std::max_element(load.begin(), load.end()));
    std::size_t k = 0;
    while (k < assign.size() && ++assign[k] == world) assign[k++] = 0;
    if (k == assign.size()) return best;
  }
}

void check_consistent(const Partition& part, const std::vector<ParamInfo>& p, int world) {
  ASSERT_EQ(part.owner.size(), p.size());
  std::vector<std::uint64_t> load(static_cast<std::size_t>(world), 0);
  for (std::size_t i = 0; i < p.size(); ++i) {
    ASSERT_GE(part.owner[i], 0);
    ASSERT_LT(part.owner[i], world);
    load[static_cast<std::size_t>(part.owner[i])] += p[i].trainable ? p[i].numel : 1;
  }
  EXPECT_EQ(load, part.load);
  EXPECT_EQ(part.max_load, *std::max_element(load.begin(), load.end()));
}

// Size distributions chosen to hurt greedy partitioners.
std::vector<ParamInfo> adversarial(std::mt19937_64& rng, int kind, std::size_t n) {
  std::vector<ParamInfo> p;
  std::uniform_int_distribution<std::uint64_t> u(1, 1000);
  for (std::size_t i = 0; i < n; ++i) {
    std::uint64_t s = 1;
    switch (kind) {
      case 0: s = 100; break;                                 // all equal
      case 1: s = i + 1; break;                               // ascending: worst for in-order greedy
      case 2: s = n - i; break;                               // descending
      case 3: s = i == 0 ? 1000 * n : u(rng) % 3 + 1; break;  // one huge, many tiny
      case 4: s = std::uint64_t{1} << (i % 20); break;        // powers of two
      case 5: s = i == n - 1 ? 100 * n : 1; break;            // huge one last
      default: s = u(rng) * u(rng); break;                    // heavy-tailed
    }
    p.push_back({.numel = s});
  }
  return p;
}

TEST(Partition, GreedyInOrderBoundOnAdversarialSizes) {
  // List scheduling: when a param is placed its rank holds <= the mean so far, so
  // max load <= total / world + the largest param.
  std::mt19937_64 rng(1);
  for (int t = 0; t < 3000 / kPropertyScale; ++t) {
    const int world = 1 + t % 8;
    const auto p = adversarial(rng, t % 7, 1 + (t * 7) % 60);
    auto part = partition_greedy_in_order(p, world);
    ASSERT_TRUE(part.has_value());
    check_consistent(*part, p, world);
    std::uint64_t total = 0, largest = 0;
    for (const auto& x : p) total += x.numel, largest = std::max(largest, x.numel);
    EXPECT_LE(part->max_load * world, total + largest * world) << "t=" << t;
    EXPECT_GE(part->imbalance, 1.0);
  }
}

TEST(Partition, SortedGreedyWithinGrahamBoundOfOptimum) {
  // LPT: max load <= (4/3 - 1/(3 world)) * OPT, OPT by brute force.
  std::mt19937_64 rng(2);
  for (int t = 0; t < 1500 / kPropertyScale; ++t) {
    const int world = 2 + t % 2;
    const auto p = adversarial(rng, t % 7, 1 + t % 9);
    auto part = partition_sorted_greedy(p, world);
    ASSERT_TRUE(part.has_value());
    check_consistent(*part, p, world);
    const std::uint64_t opt = optimal_max_load(p, world);
    EXPECT_LE(static_cast<double>(part->max_load) * 3 * world, static_cast<double>(opt) * (4 * world - 1))
        << "t=" << t;
  }
}

TEST(Partition, GrahamsTightInstance) {
  // 2m+1 jobs: 2m-1, 2m-1, 2m-2, 2m-2, ..., m+1, m+1, m, m, m. LPT reaches exactly
  // (4/3 - 1/(3m)) * OPT, with OPT = 3m.
  for (int m = 2; m <= 5; ++m) {
    std::vector<ParamInfo> p;
    for (int v = 2 * m - 1; v >= m + 1; --v) p.push_back({.numel = static_cast<std::uint64_t>(v)}), p.push_back({.numel = static_cast<std::uint64_t>(v)});
    for (int k = 0; k < 3; ++k) p.push_back({.numel = static_cast<std::uint64_t>(m)});
    auto part = partition_sorted_greedy(p, m);
    ASSERT_TRUE(part.has_value());
    EXPECT_EQ(part->max_load, static_cast<std::uint64_t>(4 * m - 1));
    if (m <= 3) {
      EXPECT_EQ(optimal_max_load(p, m), static_cast<std::uint64_t>(3 * m));
    }
  }
}

TEST(Partition, FrozenParamsWeighOne) {
  std::vector<ParamInfo> p = {{.numel = 1000, .trainable = false}, {.numel = 10}, {.numel = 10}};
  auto part = partition_greedy_in_order(p, 2);
  ASSERT_TRUE(part.has_value());
  EXPECT_EQ(part->owner, (std::vector<int>{0, 1, 0}));
  EXPECT_EQ(part->load, (std::vector<std::uint64_t>{11, 10}));
}

TEST(Partition, DeterministicAndTiesToLowestRank) {
  const auto p = of({5, 5, 5, 5, 3});
  auto a = partition_sorted_greedy(p, 3);
  auto b = partition_sorted_greedy(p, 3);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->owner, b->owner);
  EXPECT_EQ(a->owner, (std::vector<int>{0, 1, 2, 0, 1}));  // ties go to the lowest rank
  auto g = partition_greedy_in_order(of({1, 1, 1}), 3);
  EXPECT_EQ(g->owner, (std::vector<int>{0, 1, 2}));
  EXPECT_FALSE(partition_greedy_in_order(p, 0).has_value());
}

TEST(Partition, FlatSplitPadsTheTail) {
  auto s = split_flat(10'000, 4, 64);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->padded_numel, 10'048u);  // multiple of lcm(4, 64) = 64
  EXPECT_EQ(s->shard_numel, 2512u);
  EXPECT_EQ(s->padding, 48u);
  EXPECT_EQ(s->load, (std::vector<std::uint64_t>{2512, 2512, 2512, 2464}));
  std::mt19937_64 rng(3);
  for (int t = 0; t < 5000 / kPropertyScale; ++t) {
    const std::uint64_t n = rng() % 100'000;
    const int world = 1 + static_cast<int>(rng() % 16);
    const std::uint64_t align = 1 + rng() % 300;
    auto f = split_flat(n, world, align);
    ASSERT_TRUE(f.has_value());
    const std::uint64_t lcm = *alignment_elems(world, align);
    EXPECT_EQ(f->padded_numel % lcm, 0u);
    EXPECT_LT(f->padding, lcm);
    EXPECT_EQ(std::accumulate(f->load.begin(), f->load.end(), std::uint64_t{0}), n);
    // Only the tail is short: at most one rank is partial.
    int partial = 0;
    for (std::uint64_t l : f->load) partial += l != 0 && l != f->shard_numel;
    EXPECT_LE(partial, 1);
  }
  EXPECT_FALSE(split_flat(10, 2, 0).has_value());
}

}  // namespace
}  // namespace strata::plan
