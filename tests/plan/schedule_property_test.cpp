// Property tests of make_schedule on thousands of random instances (fixed seeds): every
// schedule replays cleanly (budgets, capacities, prefetch bucket, reuse rule, every
// access finds its chunks gathered, no release of a chunk before its use), and, where
// Belady is provably optimal, gathers exactly the minimum found by exhaustive search.
#include <random>

#include <gtest/gtest.h>

#include "plan/schedule_checker.h"
#include "support/property_scale.h"

namespace strata::plan {
namespace {

using strata::testing::kPropertyScale;

struct Shape {
  int max_chunks = 8;
  int max_accesses = 24;
  bool equal_sizes = true;
  bool one_home = true;
  bool tight = true;  // budgets near the minimum, so eviction happens
  // A host budget limits nvme staging; the exhaustive search does not model it.
  bool host_budget = true;
  // Accesses that stay open while later ones run (Note [overlapping accesses]), ending
  // in a random order; the exhaustive search does not model them.
  bool overlap = false;
};

// Random ends: after each access begins, each open access ends with probability 1/2,
// those that end in a random order; whatever is open after the last access ends then.
void random_ends(std::mt19937_64& rng, ScheduleInput& in) {
  const auto n = static_cast<std::uint32_t>(in.accesses.size());
  std::vector<std::uint32_t> open;
  for (std::uint32_t i = 0; i < n; ++i) {
    open.push_back(i);
    std::vector<std::uint32_t> ending, staying;
    for (std::uint32_t k : open) (i + 1 == n || rng() % 2 == 0 ? ending : staying).push_back(k);
    std::shuffle(ending.begin(), ending.end(), rng);
    for (std::uint32_t k : ending) {
      in.accesses[k].open_through = i;
      in.close_order.push_back(k);
    }
    open = staying;
  }
}

// A random instance: a forward pass over random modules, mirrored in backward, with
// random extra accesses; random knobs.
ScheduleInput random_instance(std::mt19937_64& rng, const Shape& shape) {
  auto pick = [&rng](std::uint64_t lo, std::uint64_t hi) { return std::uniform_int_distribution<std::uint64_t>(lo, hi)(rng); };
  ScheduleInput in;
  ScheduleOptions& o = in.options;
  o.world = static_cast<int>(pick(1, 4));
  const auto w = static_cast<std::uint64_t>(o.world);
  const std::size_t m = pick(1, static_cast<std::uint64_t>(shape.max_chunks));
  const Tier home = static_cast<Tier>(pick(0, 2));
  const std::uint64_t unit = 64 * w;
  for (std::size_t c = 0; c < m; ++c) {
    ScheduleChunk ch;
    const std::uint64_t units = shape.equal_sizes ? 4 : pick(1, 8);
    ch.bytes = units * unit;
    ch.numel = ch.bytes / 2;
    ch.grad_bytes = pick(0, 4) == 0 ? 0 : ch.bytes;
    ch.shard_tier = shape.one_home ? home : static_cast<Tier>(pick(0, 2));
    ch.optim_tier = static_cast<Tier>(pick(0, 2));
    ch.optim_state_bytes = ch.grad_bytes > 0 ? ch.bytes / w * 6 : 0;
    ch.grad_shard_bytes = ch.grad_bytes > 0 ? ch.bytes / w * 2 : 0;
    ch.persistent = pick(0, 12) == 0;
    in.chunks.push_back(ch);
  }
  const std::size_t n_fwd = pick(1, static_cast<std::uint64_t>(shape.max_accesses) / 2);
  for (std::size_t i = 0; i < n_fwd; ++i) {
    ScheduleAccess a;
    const std::size_t k = pick(1, std::min<std::uint64_t>(3, m));
    for (std::size_t j = 0; j < k; ++j) a.chunks.push_back(static_cast<ChunkId>(pick(0, m - 1)));
    a.reserved_compute_bytes = pick(0, 3) * unit;
    in.accesses.push_back(a);
  }
  for (std::size_t i = n_fwd; i-- > 0;) {
    ScheduleAccess a = in.accesses[i];
    a.phase = Phase::kBackward;
    if (pick(0, 5) == 0) a.chunks.push_back(static_cast<ChunkId>(pick(0, m - 1)));
    in.accesses.push_back(a);
  }
  if (shape.overlap) {
    random_ends(rng, in);
    // A chunk's first gradient may arrive after its first backward access (or, for a
    // wrong input, anywhere: the planner clamps it to the chunk's backward).
    in.grad_from.assign(m, UINT32_MAX);
    for (std::size_t c = 0; c < m; ++c)
      if (pick(0, 1) == 0) in.grad_from[c] = static_cast<std::uint32_t>(pick(0, in.accesses.size() - 1));
  }
  // Knobs: each of prefetch, live cap, reuse distance and persistence sometimes off.
  const std::uint64_t total = m * 8 * unit;
  o.prefetch_bucket_bytes = pick(0, 3) == 0 ? 0 : pick(0, total);
  o.max_live_bytes = pick(0, 2) == 0 ? testing::kUnbounded : pick(0, total);
  const std::uint64_t r = pick(0, 3);
  o.max_reuse_distance_elems = r == 0 ? 0 : r == 1 ? testing::kUnbounded : pick(0, total);
  o.persistence_threshold_elems = pick(0, 5) == 0 ? 4 * unit / 2 + 1 : 0;
  if (shape.tight) {
    // Just above what the largest access needs, plus some slack.
    const auto facts = testing::facts_of(ScheduleInput{in.chunks, in.accesses, ScheduleOptions{.world = o.world, .persistence_threshold_elems = o.persistence_threshold_elems}, in.close_order});
    std::uint64_t worst = 0;
    for (std::size_t i = 0; i < in.accesses.size(); ++i)
      worst = std::max(worst, facts.need[i] + facts.fixed[0] + in.accesses[i].reserved_compute_bytes + facts.grad_live[i]);
    o.budget_bytes[0] = worst + pick(0, 2) * 4 * unit - (pick(0, 10) == 0 ? unit : 0);  // sometimes infeasible
  }
  if (shape.host_budget && pick(0, 3) == 0) o.budget_bytes[1] = testing::facts_of(in).fixed[1] + pick(0, 4) * unit;
  return in;
}

// Checks one instance: the schedule replays, or the error is a real infeasibility.
void check_valid(const ScheduleInput& in, int seed) {
  auto s = make_schedule(in);
  const auto facts = testing::facts_of(in);
  if (!s) {
    // Only budgets can make a valid input fail, and the message must say why.
    ASSERT_EQ(s.error().code(), ErrorCode::kResourceExhausted) << "seed " << seed << ": " << s.error();
    EXPECT_NE(s.error().message().find("cannot fit: need"), std::string::npos) << s.error();
    EXPECT_NE(s.error().message().find("budget"), std::string::npos) << s.error();
    EXPECT_NE(s.error().message().find("held by"), std::string::npos) << s.error();
    return;
  }
  ASSERT_TRUE(facts.feasible) << "seed " << seed << ": a schedule for an infeasible compute budget";
  const std::string why = testing::replay(in, *s);
  ASSERT_EQ(why, "") << "seed " << seed << "\n" << describe(*s);
}

TEST(ScheduleProperty, RandomSmallInstancesReplayCleanly) {
  std::mt19937_64 rng(20240501);
  for (int t = 0; t < 20000 / kPropertyScale; ++t) {
    const Shape shape{.equal_sizes = t % 2 == 0, .one_home = t % 3 != 0, .tight = t % 5 != 0, .overlap = t % 4 == 3};
    check_valid(random_instance(rng, shape), t);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(ScheduleProperty, RandomLargeInstancesReplayCleanly) {
  std::mt19937_64 rng(777);
  for (int t = 0; t < 300 / kPropertyScale; ++t) {
    const Shape shape{.max_chunks = 60, .max_accesses = 300, .equal_sizes = t % 2 == 0, .one_home = false, .overlap = t % 3 == 2};
    check_valid(random_instance(rng, shape), t);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// The optimality claim of schedule.h, exactly where it holds: equal chunk sizes and one
// home tier for every shard (so each gather costs the same on every link). The
// exhaustive search ranges over every schedule with the same per-access capacities and
// reuse-rule releases; prefetching is free to differ (it moves no extra bytes).
TEST(ScheduleProperty, BeladyGathersTheMinimumForEqualSizes) {
  std::mt19937_64 rng(31337);
  int compared = 0, evicting = 0;
  for (int t = 0; t < 20000 / kPropertyScale; ++t) {
    const ScheduleInput in = random_instance(rng, Shape{.equal_sizes = true, .one_home = true, .host_budget = false});
    const std::uint64_t best = testing::min_gathered_bytes(in);
    auto s = make_schedule(in);
    if (best == testing::kUnbounded) {
      ASSERT_FALSE(s.has_value()) << "seed " << t << ": scheduled an instance with no valid schedule";
      continue;
    }
    ASSERT_TRUE(s.has_value()) << "seed " << t << ": " << s.error();
    ASSERT_EQ(s->gathered_total_bytes, best) << "seed " << t << "\n" << describe(*s);
    ++compared;
    for (const AccessOps& a : s->accesses)
      for (const Op& op : a.pre) evicting += op.kind == OpKind::kEvict;
  }
  // The test means something only if many instances were feasible and evicted.
  EXPECT_GT(compared, 10000 / kPropertyScale);
  EXPECT_GT(evicting, 4000 / kPropertyScale);
}

// With unequal sizes Belady is a heuristic: the schedule must still be valid, never
// beat the true minimum (a check of the search), and is usually optimal. The share is
// recorded, and bounded loosely so that a regression in eviction order shows.
TEST(ScheduleProperty, UnequalSizesAreValidAndUsuallyOptimal) {
  std::mt19937_64 rng(4242);
  int compared = 0, optimal = 0;
  for (int t = 0; t < 10000 / kPropertyScale; ++t) {
    const ScheduleInput in = random_instance(rng, Shape{.equal_sizes = false, .one_home = true, .host_budget = false});
    const std::uint64_t best = testing::min_gathered_bytes(in);
    auto s = make_schedule(in);
    if (best == testing::kUnbounded) continue;
    ASSERT_TRUE(s.has_value()) << s.error();
    ASSERT_EQ(testing::replay(in, *s), "");
    ASSERT_GE(s->gathered_total_bytes, best);
    ++compared;
    optimal += s->gathered_total_bytes == best;
  }
  RecordProperty("optimal_share_percent", compared ? 100 * optimal / compared : 0);
  EXPECT_GT(compared, 5000 / kPropertyScale);
  EXPECT_GT(optimal * 10, compared * 9) << optimal << " of " << compared;
}

// Prefetching never changes what is gathered, only when.
TEST(ScheduleProperty, PrefetchMovesNoExtraBytes) {
  std::mt19937_64 rng(99);
  int hoisted = 0;
  for (int t = 0; t < 1500 / kPropertyScale; ++t) {
    ScheduleInput in = random_instance(rng, Shape{.equal_sizes = t % 2 == 0, .one_home = false, .overlap = t % 3 == 2});
    in.options.prefetch_bucket_bytes = 0;
    auto demand = make_schedule(in);
    in.options.prefetch_bucket_bytes = testing::kUnbounded;
    auto prefetch = make_schedule(in);
    ASSERT_EQ(demand.has_value(), prefetch.has_value());
    if (!demand) continue;
    ASSERT_EQ(testing::replay(in, *prefetch), "") << "seed " << t;
    EXPECT_EQ(demand->moved, prefetch->moved) << "seed " << t;
    EXPECT_EQ(demand->n_gathers, prefetch->n_gathers);
    EXPECT_EQ(demand->n_prefetched, 0u);
    hoisted += static_cast<int>(prefetch->n_prefetched);
  }
  EXPECT_GT(hoisted, 1000 / kPropertyScale);
}

}  // namespace
}  // namespace strata::plan

namespace strata::plan {
namespace {

// The replay must catch broken schedules, or the tests above prove nothing.
TEST(ScheduleChecker, ReplayCatchesMutations) {
  std::mt19937_64 rng(5);
  int caught_drop = 0, caught_release = 0, tried = 0;
  for (int t = 0; t < 2000 / kPropertyScale && tried < 300; ++t) {
    const ScheduleInput in = random_instance(rng, Shape{.one_home = false, .tight = true});
    auto s = make_schedule(in);
    if (!s || s->n_gathers == 0) continue;
    ++tried;
    // Drop the first non-persistent gather: its access must find the chunk missing.
    Schedule dropped = *s;
    for (AccessOps& a : dropped.accesses) {
      auto it = std::find_if(a.pre.begin(), a.pre.end(), [&](const Op& op) {
        return op.kind == OpKind::kGather && !(&a == &dropped.accesses[0] && op.use_index == 0 &&
                                                testing::facts_of(in).persistent[op.chunk]);
      });
      if (it != a.pre.end()) {
        a.pre.erase(it);
        break;
      }
    }
    caught_drop += testing::replay(in, dropped) != "";
    // Release a chunk right after the access that gathered it, before a later use.
    Schedule early = *s;
    for (std::size_t i = 0; i + 1 < early.accesses.size(); ++i) {
      auto it = std::find_if(early.accesses[i].pre.begin(), early.accesses[i].pre.end(),
                             [&](const Op& op) { return op.kind == OpKind::kGather && op.use_index > i; });
      if (it == early.accesses[i].pre.end()) continue;
      early.accesses[i].post.insert(early.accesses[i].post.begin(),
                                    Op{.kind = OpKind::kRelease, .chunk = it->chunk, .bytes = it->bytes});
      caught_release += testing::replay(in, early) != "";
      break;
    }
  }
  EXPECT_GT(tried, 100);
  EXPECT_EQ(caught_drop, tried);
  EXPECT_GT(caught_release, 0);
}

// With overlapping accesses: a chunk released while an access that owns it is still open
// (in the post of an access nested in it) must be caught.
TEST(ScheduleChecker, ReplayCatchesAReleaseUnderAnOpenOwner) {
  std::mt19937_64 rng(11);
  int tried = 0, caught = 0;
  for (int t = 0; t < 4000 / kPropertyScale && tried < 200; ++t) {
    const ScheduleInput in = random_instance(rng, Shape{.one_home = false, .tight = false, .overlap = true});
    auto s = make_schedule(in);
    if (!s) continue;
    const testing::Facts f = testing::facts_of(in);
    // An open access k with a chunk, and an access j it is open at that ends before it.
    bool done = false;
    for (std::uint32_t k = 0; k < in.accesses.size() && !done; ++k) {
      if (f.own[k].empty() || f.persistent[f.own[k][0]]) continue;
      const auto rank = [&](std::uint32_t a) { return std::find(f.close_order.begin(), f.close_order.end(), a); };
      for (std::uint32_t j = k + 1; j <= f.close[k] && !done; ++j) {
        if (rank(j) > rank(k)) continue;
        Schedule bad = *s;
        bad.accesses[j].post.insert(bad.accesses[j].post.begin(),
                                    Op{.kind = OpKind::kRelease, .chunk = f.own[k][0], .bytes = in.chunks[f.own[k][0]].bytes});
        ++tried;
        caught += testing::replay(in, bad) != "";
        done = true;
      }
    }
  }
  EXPECT_GT(tried, 50);
  EXPECT_EQ(caught, tried);
}

// The exhaustive search and the planner agree on a sequence worked by hand.
TEST(ScheduleChecker, SearchFindsTheBeladyMinimum) {
  ScheduleInput in;
  in.options.budget_bytes[0] = 2 * 128;
  for (int c = 0; c < 3; ++c) in.chunks.push_back(ScheduleChunk{.bytes = 128, .numel = 64, .shard_tier = Tier::kHost});
  for (ChunkId c : {0u, 1u, 2u, 0u, 1u, 2u, 0u, 1u}) in.accesses.push_back(ScheduleAccess{.chunks = {c}});
  // 3 chunks cycling through room for 2. Belady: 0 1 2(evicts 1) 0 1(evicts 0) 2
  // (then released: never used again) 0 1 = 5 gathers; LRU would gather all 8.
  auto s = make_schedule(in);
  ASSERT_TRUE(s.has_value()) << s.error();
  EXPECT_EQ(s->n_gathers, 5u);
  EXPECT_EQ(testing::min_gathered_bytes(in), 5u * 128);
  EXPECT_EQ(s->gathered_total_bytes, 5u * 128);
  std::vector<ChunkId> evicted;
  for (const AccessOps& a : s->accesses)
    for (const Op& op : a.pre)
      if (op.kind == OpKind::kEvict) evicted.push_back(op.chunk);
  EXPECT_EQ(evicted, (std::vector<ChunkId>{1, 0}));
}

}  // namespace
}  // namespace strata::plan
