// make_schedule on small hand-made cases: the rules of strata/plan/schedule.h one by
// one, the cost model, the error, and the worked example of docs/architecture.md.
#include <gtest/gtest.h>

#include "plan/schedule_checker.h"
#include "strata/base/config.h"

namespace strata::plan {
namespace {

constexpr std::uint64_t kMiB = 1 << 20;

ScheduleChunk chunk(std::uint64_t bytes, Tier home, bool grads = true) {
  return ScheduleChunk{.bytes = bytes, .numel = bytes / 2, .grad_bytes = grads ? bytes : 0, .shard_tier = home,
                       .optim_tier = Tier::kHost};
}

// fwd over chunks 0..n-1, then bwd in reverse: a stack of layers, one chunk each.
std::vector<ScheduleAccess> layers(int n) {
  std::vector<ScheduleAccess> a;
  for (int i = 0; i < n; ++i) a.push_back({.chunks = {static_cast<ChunkId>(i)}, .phase = Phase::kForward});
  for (int i = n; i-- > 0;) a.push_back({.chunks = {static_cast<ChunkId>(i)}, .phase = Phase::kBackward});
  return a;
}

std::vector<Op> ops_of(const std::vector<Op>& ops, OpKind kind) {
  std::vector<Op> out;
  for (const Op& op : ops)
    if (op.kind == kind) out.push_back(op);
  return out;
}

// The worked example in docs/architecture.md ("Planner"): keep the two in sync.
ScheduleInput worked_example() {
  ScheduleInput in;
  for (int c = 0; c < 4; ++c) in.chunks.push_back(chunk(kMiB, Tier::kHost));
  in.accesses = layers(4);
  in.accesses[1].reserved_compute_bytes = kMiB / 2;  // activations measured in warm-up
  in.options.world = 2;
  in.options.prefetch_bucket_bytes = kMiB;
  in.options.budget_bytes[0] = 3 * kMiB + kMiB / 2;
  return in;
}

TEST(Schedule, WorkedExample) {
  const ScheduleInput in = worked_example();
  auto s = make_schedule(in);
  ASSERT_TRUE(s.has_value()) << s.error();
  EXPECT_EQ(testing::replay(in, *s), "");
  EXPECT_EQ(describe(*s), R"(access 0: compute 2.0 MiB (gathered 2.0 MiB)
  pre  gather c0 from host (1.0 MiB, use 0)
  pre  gather c1 from host (1.0 MiB, use 1)
access 1: compute 3.5 MiB (gathered 3.0 MiB)
  pre  gather c2 from host (1.0 MiB, use 2)
access 2: compute 3.0 MiB (gathered 3.0 MiB)
  pre  evict c0 (1.0 MiB)
  pre  gather c3 from host (1.0 MiB, use 3)
access 3: compute 3.0 MiB (gathered 3.0 MiB)
access 4: compute 3.0 MiB (gathered 2.0 MiB)
  pre  evict c1 (1.0 MiB)
  post release c3 (1.0 MiB)
  post reduce-scatter c3 to host (1.0 MiB)
access 5: compute 3.0 MiB (gathered 2.0 MiB)
  pre  gather c1 from host (1.0 MiB, use 6)
  post release c2 (1.0 MiB)
  post reduce-scatter c2 to host (1.0 MiB)
access 6: compute 3.0 MiB (gathered 2.0 MiB)
  pre  gather c0 from host (1.0 MiB, use 7)
  post release c1 (1.0 MiB)
  post reduce-scatter c1 to host (1.0 MiB)
access 7: compute 2.0 MiB (gathered 1.0 MiB)
  post release c0 (1.0 MiB)
  post reduce-scatter c0 to host (1.0 MiB)
step: step c0 on host
step: step c1 on host
step: step c2 on host
step: step c3 on host
moved: nvme->host 0 B, host->nvme 0 B, host->compute 3.0 MiB, compute->host 2.0 MiB, gather 3.0 MiB, reduce-scatter 2.0 MiB
peak: compute 3.5 MiB, host 2.0 MiB, nvme 0 B
)");
}

TEST(Schedule, DemandOnlyWithoutPrefetchBucket) {
  ScheduleInput in = worked_example();
  in.options.prefetch_bucket_bytes = 0;
  auto s = make_schedule(in);
  ASSERT_TRUE(s.has_value()) << s.error();
  EXPECT_EQ(testing::replay(in, *s), "");
  EXPECT_EQ(s->n_prefetched, 0u);
  for (std::size_t i = 0; i < s->accesses.size(); ++i)
    for (const Op& op : ops_of(s->accesses[i].pre, OpKind::kGather)) EXPECT_EQ(op.use_index, i);
  // The same gathers as with prefetch: prefetch moves no bytes.
  auto p = make_schedule(worked_example());
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(s->moved, p->moved);
}

TEST(Schedule, ReuseDistanceZeroReleasesAfterEveryUse) {
  ScheduleInput in;
  for (int c = 0; c < 2; ++c) in.chunks.push_back(chunk(kMiB, Tier::kCompute));
  in.options.world = 2;
  in.options.max_reuse_distance_elems = 0;
  in.accesses = {{.chunks = {0}}, {.chunks = {0}}, {.chunks = {1}}, {.chunks = {0}}};
  auto s = make_schedule(in);
  ASSERT_TRUE(s.has_value()) << s.error();
  EXPECT_EQ(testing::replay(in, *s), "");
  EXPECT_EQ(s->n_gathers, 4u);  // released after each use, even the back-to-back one
  // DeepSpeed's rule: chunk 0 used again after one access of 512Ki elements is kept when
  // the distance is above that, released when it is not.
  in.options.max_reuse_distance_elems = kMiB / 2 + 1;
  s = make_schedule(in);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->n_gathers, 2u);
  in.options.max_reuse_distance_elems = kMiB / 2;
  s = make_schedule(in);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->n_gathers, 3u);  // 0 kept across the adjacent reuse (distance 0), not across chunk 1
}

// Activation checkpointing (Note [overlapping accesses]): units E, B1, B2, H on chunks
// 0..3; B1 and B2 form a checkpointed block, so B2's backward (access 5) recomputes
// B1's and B2's forwards (6, 7) before its own gradient is done, and ends after them.
ScheduleInput checkpointed_block() {
  ScheduleInput in;
  for (int c = 0; c < 4; ++c) in.chunks.push_back(chunk(kMiB, Tier::kHost));
  in.accesses = layers(4);  // 0..3 fwd, 4: H bwd, 5: B2 bwd, 6: B1 bwd, 7: E bwd
  in.accesses.insert(in.accesses.begin() + 6, {{.chunks = {1}}, {.chunks = {2}}});
  in.accesses[5].open_through = 7;
  in.close_order = {0, 1, 2, 3, 4, 6, 7, 5, 8, 9};
  in.options.world = 2;
  in.options.max_reuse_distance_elems = 0;  // release everything as soon as it may go
  return in;
}

TEST(Schedule, AnOpenAccessKeepsItsChunksAndGradientUntilItEnds) {
  ScheduleInput in = checkpointed_block();
  auto s = make_schedule(in);
  ASSERT_TRUE(s.has_value()) << s.error();
  EXPECT_EQ(testing::replay(in, *s), "");
  // B2's chunk stays gathered through the recomputation, with its grad buffer: at access
  // 6 (B1's recomputed forward) c1, c2 and c2's gradient are in compute.
  EXPECT_EQ(s->gathered_bytes[6], 2 * kMiB);
  EXPECT_EQ(s->compute_bytes[6], 3 * kMiB);
  // Its release and reduce-scatter run when access 5 ends (its post, run after 7's).
  EXPECT_EQ(ops_of(s->accesses[5].post, OpKind::kReduceScatter).size(), 1u);
  EXPECT_EQ(ops_of(s->accesses[5].post, OpKind::kRelease).size(), 1u);
  EXPECT_EQ(ops_of(s->accesses[7].post, OpKind::kRelease).size(), 0u);
  // A budget that fits the accesses one at a time but not the overlap is refused up
  // front, naming the access.
  in.options.budget_bytes[0] = 2 * kMiB + kMiB / 2;
  auto refused = make_schedule(in);
  ASSERT_FALSE(refused.has_value());
  EXPECT_NE(refused.error().message().find("at access 6 (fwd)"), std::string::npos) << refused.error();
  in.accesses[5].open_through = 0;
  in.close_order.clear();
  EXPECT_TRUE(make_schedule(in).has_value());
  // Ends must be consistent: open_through ordered along the close order, and within
  // the accesses (UINT32_MAX is not "none" here, as it is in grad_from).
  in = checkpointed_block();
  in.accesses[5].open_through = UINT32_MAX;
  EXPECT_EQ(make_schedule(in).error().code(), ErrorCode::kInvalidArgument);
  in = checkpointed_block();
  in.close_order = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  EXPECT_EQ(make_schedule(in).error().code(), ErrorCode::kInvalidArgument);
}

// A tied weight (chunk 0) used by the first and the last unit: its summed gradient, so
// its buffer, comes only at the last backward access that uses it.
TEST(Schedule, AGradBufferIsTakenWhenItsFirstGradientArrives) {
  ScheduleInput in;
  for (int c = 0; c < 3; ++c) in.chunks.push_back(chunk(kMiB, Tier::kHost));
  in.options.world = 2;
  in.options.max_reuse_distance_elems = 0;  // released after every use
  // fwd: 0 (c0), 1 (c1), 2 (c2), 3 (c0, the head); bwd: 4 (c0), 5 (c2), 6 (c1), 7 (c0)
  for (ChunkId c : {0u, 1u, 2u, 0u}) in.accesses.push_back({.chunks = {c}});
  for (ChunkId c : {0u, 2u, 1u, 0u}) in.accesses.push_back({.chunks = {c}, .phase = Phase::kBackward});
  auto first = make_schedule(in);
  ASSERT_TRUE(first.has_value()) << first.error();
  EXPECT_EQ(first->compute_bytes[5], 3 * kMiB);  // c2 gathered; c0's buffer (from access 4) and c2's
  in.grad_from = {7, UINT32_MAX, UINT32_MAX};
  auto late = make_schedule(in);
  ASSERT_TRUE(late.has_value()) << late.error();
  EXPECT_EQ(testing::replay(in, *late), "");
  EXPECT_EQ(late->compute_bytes[5], 2 * kMiB);
  EXPECT_EQ(late->compute_bytes[7], first->compute_bytes[7]);
  in.grad_from = {7};
  EXPECT_EQ(make_schedule(in).error().code(), ErrorCode::kInvalidArgument);
}

TEST(Schedule, PersistentChunksStayGathered) {
  ScheduleInput in;
  in.chunks = {chunk(kMiB, Tier::kHost), chunk(4096, Tier::kHost), chunk(kMiB, Tier::kHost)};
  in.accesses = layers(3);
  in.options.world = 2;
  in.options.max_reuse_distance_elems = 0;
  in.options.persistence_threshold_elems = 4096;  // chunk 1 has 2048 elements
  auto s = make_schedule(in);
  ASSERT_TRUE(s.has_value()) << s.error();
  EXPECT_EQ(testing::replay(in, *s), "");
  const auto first = ops_of(s->accesses[0].pre, OpKind::kGather);
  ASSERT_FALSE(first.empty());
  EXPECT_EQ(first[0].chunk, 1u);
  for (const AccessOps& a : s->accesses) {
    for (const Op& op : a.post) EXPECT_FALSE(op.kind == OpKind::kRelease && op.chunk == 1) << "persistent released";
    for (const Op& op : a.pre) EXPECT_FALSE(op.kind == OpKind::kEvict && op.chunk == 1) << "persistent evicted";
  }
  EXPECT_EQ(s->n_gathers, 4u);  // chunks 0 and 2, once per phase; chunk 1 not counted
}

TEST(Schedule, WorldOneComputeChunksAreNeverMoved) {
  ScheduleInput in;
  in.chunks = {chunk(kMiB, Tier::kCompute), chunk(kMiB, Tier::kHost)};
  in.accesses = layers(2);
  auto s = make_schedule(in);
  ASSERT_TRUE(s.has_value()) << s.error();
  EXPECT_EQ(testing::replay(in, *s), "");
  for (const AccessOps& a : s->accesses)
    for (const Op& op : a.pre) EXPECT_NE(op.chunk, 0u) << "chunk 0 is its own gathered copy";
  // Chunk 1 comes from host whole (world 1: no network), once: it stays gathered for its
  // adjacent backward use. Plus chunk 0's updated params going home after the host step.
  EXPECT_EQ(s->moved.host_to_compute, kMiB + kMiB);
  EXPECT_EQ(ops_of(s->step, OpKind::kStore).size(), 1u);
  EXPECT_EQ(s->moved.net_gather, 0u);
  EXPECT_EQ(s->moved.compute_to_host, 2 * kMiB);
}

TEST(Schedule, CostModelPerLink) {
  // world 4, one chunk of 4 MiB per home tier, optimizer state on nvme for all.
  ScheduleInput in;
  for (Tier home : {Tier::kCompute, Tier::kHost, Tier::kNvme}) {
    ScheduleChunk c = chunk(4 * kMiB, home);
    c.optim_tier = Tier::kNvme;
    c.optim_state_bytes = 3 * kMiB;  // 12 bytes/elem x 1Mi elements / 4 ranks
    in.chunks.push_back(c);
  }
  in.accesses = layers(3);
  in.options.world = 4;
  in.options.max_reuse_distance_elems = 0;
  auto s = make_schedule(in);
  ASSERT_TRUE(s.has_value()) << s.error();
  EXPECT_EQ(testing::replay(in, *s), "");
  const std::uint64_t shard = kMiB;  // 4 MiB / 4
  // Each chunk gathered twice (fwd, bwd): network 3 shards each time.
  EXPECT_EQ(s->moved.net_gather, 3 * 2 * 3 * shard);
  // host and nvme homes copy their shard up each gather; nvme also reads it first.
  EXPECT_EQ(s->moved.nvme_to_host, 2 * shard + 3 * 3 * kMiB);              // + optimizer state in
  EXPECT_EQ(s->moved.host_to_nvme, 3 * 3 * kMiB + shard);                  // state out + params home
  EXPECT_EQ(s->moved.host_to_compute, 2 * 2 * shard + shard);              // gathers + params home (compute chunk)
  EXPECT_EQ(s->moved.compute_to_host, 3 * shard);                          // grad shards to host
  EXPECT_EQ(s->moved.net_reduce_scatter, 3 * 3 * shard);
  // The nvme chunk's Load comes right before its Gather, with the same use.
  const auto& pre = s->accesses[2].pre;
  ASSERT_GE(pre.size(), 2u);
  EXPECT_EQ(pre[0].kind, OpKind::kLoad);
  EXPECT_EQ(pre[1].kind, OpKind::kGather);
  EXPECT_EQ(pre[1].from_tier, Tier::kHost);
  // link_bytes is the model written in schedule.h, op by op.
  const LinkBytes g = link_bytes(Op{.kind = OpKind::kGather, .from_tier = Tier::kHost, .bytes = 4 * kMiB}, 4);
  EXPECT_EQ(g.host_to_compute, kMiB);
  EXPECT_EQ(g.net_gather, 3 * kMiB);
  const LinkBytes st = link_bytes(Op{.kind = OpKind::kStore, .from_tier = Tier::kCompute, .to_tier = Tier::kNvme, .bytes = 7}, 4);
  EXPECT_EQ(st.compute_to_host, 7u);
  EXPECT_EQ(st.host_to_nvme, 7u);
}

TEST(Schedule, ReservedBytesForceEviction) {
  ScheduleInput in;
  for (int c = 0; c < 3; ++c) in.chunks.push_back(chunk(kMiB, Tier::kHost, /*grads=*/false));
  in.accesses = {{.chunks = {0}}, {.chunks = {1}}, {.chunks = {2}}, {.chunks = {0}}, {.chunks = {1}}};
  in.options.world = 2;
  in.options.budget_bytes[0] = 3 * kMiB;
  auto roomy = make_schedule(in);
  ASSERT_TRUE(roomy.has_value());
  EXPECT_EQ(roomy->n_gathers, 3u);
  in.accesses[2].reserved_compute_bytes = kMiB;  // activations peak at access 2
  auto tight = make_schedule(in);
  ASSERT_TRUE(tight.has_value()) << tight.error();
  EXPECT_EQ(testing::replay(in, *tight), "");
  EXPECT_EQ(tight->n_gathers, 4u);
  ASSERT_EQ(ops_of(tight->accesses[2].pre, OpKind::kEvict).size(), 1u);
  EXPECT_EQ(ops_of(tight->accesses[2].pre, OpKind::kEvict)[0].chunk, 1u);  // furthest next use
}

TEST(Schedule, CannotFitNamesIndexNeedBudgetAndHolders) {
  ScheduleInput in;
  in.chunks = {chunk(2 * kMiB, Tier::kHost), chunk(kMiB, Tier::kHost)};
  in.accesses = {{.chunks = {1}}, {.chunks = {0, 1}, .reserved_compute_bytes = kMiB}};
  in.options.world = 2;
  in.options.budget_bytes[0] = 3 * kMiB;
  auto s = make_schedule(in);
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), ErrorCode::kResourceExhausted);
  EXPECT_EQ(s.error().message(),
            "cannot fit: need 4.0 MiB in compute at access 1 (fwd), budget 3.0 MiB, held by chunk 0 gathered 2.0 MiB, "
            "chunk 1 gathered 1.0 MiB, reserved (activations) 1.0 MiB")
      << s.error();
}

TEST(Schedule, HostBudgetCoversShardsAndStaging) {
  ScheduleInput in;
  in.chunks = {chunk(2 * kMiB, Tier::kHost), chunk(2 * kMiB, Tier::kNvme)};
  in.accesses = layers(2);
  in.options.world = 2;
  in.options.budget_bytes[1] = kMiB + kMiB / 2;  // chunk 0's shard (1 MiB) + less than chunk 1's staging
  auto s = make_schedule(in);
  ASSERT_FALSE(s.has_value());
  EXPECT_NE(s.error().message().find("cannot fit: need 2.0 MiB in host, budget 1.5 MiB"), std::string::npos)
      << s.error();
  in.options.budget_bytes[1] = 2 * kMiB;
  s = make_schedule(in);
  ASSERT_TRUE(s.has_value()) << s.error();
  EXPECT_EQ(s->peak[tier_index(Tier::kHost)], 2 * kMiB);
}

TEST(Schedule, BadInputIsAnError) {
  ScheduleInput in;
  in.chunks = {chunk(kMiB, Tier::kHost)};
  in.accesses = {{.chunks = {3}}};
  EXPECT_EQ(make_schedule(in).error().code(), ErrorCode::kInvalidArgument);
  in.accesses = {{.chunks = {0}}};
  in.options.world = 3;  // 1 MiB is not divisible by 3
  EXPECT_EQ(make_schedule(in).error().code(), ErrorCode::kInvalidArgument);
  in.options.world = 0;
  EXPECT_EQ(make_schedule(in).error().code(), ErrorCode::kInvalidArgument);
}

TEST(Schedule, OptionsFromConfig) {
  Config cfg;
  cfg.zero_optimization.stage3_prefetch_bucket_size = 1000;
  cfg.zero_optimization.stage3_max_live_parameters = 5000;
  cfg.zero_optimization.stage3_max_reuse_distance = 7000;
  cfg.zero_optimization.stage3_param_persistence_threshold = 10;
  cfg.strata.compute_budget = 1 << 30;
  auto o = ScheduleOptions::from_config(cfg, 4, 2);
  ASSERT_TRUE(o.has_value()) << o.error();
  EXPECT_EQ(o->world, 4);
  EXPECT_EQ(o->prefetch_bucket_bytes, 2000u);
  EXPECT_EQ(o->max_live_bytes, 10000u);
  EXPECT_EQ(o->max_reuse_distance_elems, 7000u);
  EXPECT_EQ(o->persistence_threshold_elems, 10u);
  EXPECT_EQ(o->budget_bytes[0], 1u << 30);
  EXPECT_FALSE(ScheduleOptions::from_config(cfg, 4, 3).has_value());
  EXPECT_FALSE(ScheduleOptions::from_config(cfg, 0, 2).has_value());
}

// Note [residency rules]: the one definition every component asks.
TEST(Schedule, ResidencyRules) {
  ScheduleOptions o{.world = 2, .persistence_threshold_elems = 100};
  ScheduleChunk big = chunk(4096, Tier::kHost), small = chunk(64, Tier::kHost);  // numel 2048 and 32
  EXPECT_FALSE(chunk_persistent(big, o));
  EXPECT_TRUE(chunk_persistent(small, o));
  big.persistent = true;
  EXPECT_TRUE(chunk_persistent(big, o));
  small.replicated = true;  // stages 0-2: never gathered, so never persistent
  EXPECT_FALSE(chunk_persistent(small, o));
  ScheduleChunk home = chunk(4096, Tier::kCompute);
  EXPECT_TRUE(chunk_aliased(home, 1));
  EXPECT_FALSE(chunk_aliased(home, 2));
  o.world = 1;
  EXPECT_FALSE(chunk_persistent(chunk(64, Tier::kCompute), o));  // aliased wins
  EXPECT_EQ(step_tier(Tier::kCompute), Tier::kCompute);
  EXPECT_EQ(step_tier(Tier::kHost), Tier::kHost);
  EXPECT_EQ(step_tier(Tier::kNvme), Tier::kHost);
}

// Note [step ops]: per chunk with gradients, in chunk order; the state's loads and stores
// say so, and replicated chunks are gathered after their step.
TEST(Schedule, StepOps) {
  ScheduleChunk nvme_state = chunk(4 * kMiB, Tier::kCompute);
  nvme_state.optim_tier = Tier::kNvme;
  nvme_state.optim_state_bytes = 12 * kMiB;
  ScheduleChunk frozen = chunk(kMiB, Tier::kHost, /*grads=*/false);
  ScheduleChunk replicated = chunk(2 * kMiB, Tier::kCompute);
  replicated.optim_tier = Tier::kCompute;
  replicated.replicated = true;
  const std::vector<ScheduleChunk> chunks = {nvme_state, frozen, replicated};
  const std::vector<Op> ops = step_ops(chunks, 2);
  ASSERT_EQ(ops.size(), 6u);
  EXPECT_EQ(ops[0], (Op{.kind = OpKind::kLoad, .chunk = 0, .from_tier = Tier::kNvme, .to_tier = Tier::kHost,
                        .bytes = 12 * kMiB, .what = StateKind::kOptimizer}));
  EXPECT_EQ(ops[1].kind, OpKind::kStep);
  EXPECT_EQ(ops[1].from_tier, Tier::kHost);
  EXPECT_EQ(ops[2], (Op{.kind = OpKind::kStore, .chunk = 0, .from_tier = Tier::kHost, .to_tier = Tier::kNvme,
                        .bytes = 12 * kMiB, .what = StateKind::kOptimizer}));
  // The new parameter shard goes home to compute from the host step.
  EXPECT_EQ(ops[3], (Op{.kind = OpKind::kStore, .chunk = 0, .from_tier = Tier::kHost, .to_tier = Tier::kCompute,
                        .bytes = 2 * kMiB, .what = StateKind::kParams}));
  EXPECT_EQ(ops[4].kind, OpKind::kStep);
  EXPECT_EQ(ops[4].chunk, 2u);
  EXPECT_EQ(ops[5], (Op{.kind = OpKind::kGather, .chunk = 2, .from_tier = Tier::kCompute, .to_tier = Tier::kCompute,
                        .bytes = 2 * kMiB}));
  // One rank: nothing to gather.
  EXPECT_EQ(ops_of(step_ops(chunks, 1), OpKind::kGather).size(), 0u);
  // A replicated chunk has no schedule: stages 0-2 never gather per access.
  ScheduleInput in{.chunks = {replicated}, .accesses = layers(1), .options = {.world = 2}};
  EXPECT_FALSE(make_schedule(in));
}

TEST(Schedule, ChunkAccessesFollowTheTrace) {
  const std::vector<ModuleAccess> trace = {{7, Phase::kForward}, {9, Phase::kForward}, {7, Phase::kBackward}};
  const std::map<int, std::vector<ChunkId>> chunks = {{7, {0, 1}}};
  const auto a = chunk_accesses(trace, chunks);
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a[0].chunks, (std::vector<ChunkId>{0, 1}));
  EXPECT_TRUE(a[1].chunks.empty());  // a module without parameters keeps its index
  EXPECT_EQ(a[2].phase, Phase::kBackward);
}

}  // namespace
}  // namespace strata::plan
