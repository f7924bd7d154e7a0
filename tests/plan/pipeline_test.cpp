// The planner end to end, as the engine will use it: record a trace, pack parameters
// in first-use order, map modules to chunks, schedule, and replay the schedule.
#include <gtest/gtest.h>

#include "plan/schedule_checker.h"
#include "strata/plan/estimator.h"

namespace strata::plan {
namespace {

TEST(PlannerPipeline, TraceToScheduleOnATinyGpt) {
  // gpt:2x64: module 0 = embeddings (params 0, 1), modules 1..2 = blocks (12 params
  // each), module 3 = final LayerNorm, module 4 = LM head (tied: param 0 again).
  const ModelShape gpt = gpt_shape(2, 64);
  std::vector<ParamInfo> params;
  for (std::uint64_t n : gpt.param_sizes) params.push_back({.numel = n});
  std::map<int, std::vector<std::uint32_t>> module_params = {{0, {0, 1}}, {3, {26, 27}}, {4, {0}}};
  for (int b = 0; b < 2; ++b)
    for (std::uint32_t p = 0; p < 12; ++p) module_params[1 + b].push_back(2 + 12 * static_cast<std::uint32_t>(b) + p);

  AccessTrace trace;
  trace.begin_step();
  for (int m : {0, 1, 2, 3, 4}) trace.on_access({m, Phase::kForward});
  for (int m : {4, 3, 2, 1, 0}) trace.on_access({m, Phase::kBackward});
  trace.end_step();
  ASSERT_TRUE(trace.complete());

  std::vector<ParamAccess> uses;
  for (const ModuleAccess& a : trace.accesses()) uses.push_back({module_params[a.module_id], a.phase});
  const ChunkingOptions copt{.world = 2, .io_align_elems = 64, .search_range_elems = 1 << 16, .search_step_elems = 64,
                             .persistence_threshold_elems = 256, .private_min_gap = 3};
  auto layout = pack_chunks(params, uses, copt);
  ASSERT_TRUE(layout.has_value()) << layout.error();
  // The tied embedding is used at forward accesses 0 and 4: a private chunk.
  EXPECT_EQ(layout->chunks[layout->where[0].chunk].kind, ChunkKind::kPrivate);

  std::map<int, std::vector<ChunkId>> module_chunks;
  for (const auto& [m, ps] : module_params) module_chunks[m] = chunks_of(*layout, ps);
  ScheduleInput in;
  const std::vector<Tier> homes(layout->chunks.size(), Tier::kHost);
  in.chunks = schedule_chunks(*layout, params, /*elem_bytes=*/2, /*world=*/2, homes, Tier::kHost);
  in.accesses = chunk_accesses(trace.accesses(), module_chunks);
  Config cfg;
  cfg.strata.compute_budget = 0;
  auto opt = ScheduleOptions::from_config(cfg, 2, 2);
  ASSERT_TRUE(opt.has_value());
  in.options = *opt;
  auto s = make_schedule(in);
  ASSERT_TRUE(s.has_value()) << s.error();
  EXPECT_EQ(testing::replay(in, *s), "");
  // Each chunk's optimizer state (12 bytes/elem) and fp32 grad shard live on host; the
  // shards too; params go home to host after the host step: no store.
  std::uint64_t host = 0;
  for (const Chunk& c : layout->chunks) host += c.size_elems * 2 / 2 + c.size_elems / 2 * 16;
  EXPECT_EQ(s->peak[tier_index(Tier::kHost)], host);
  for (const Op& op : s->step) EXPECT_NE(op.kind, OpKind::kStore);
  // Every gather moves its shard host->compute once; persistent chunks (flagged, or
  // under DeepSpeed's default threshold of 100000 elements) are gathered once at pre(0).
  const testing::Facts facts = testing::facts_of(in);
  std::uint64_t persistent_shards = 0;
  for (std::size_t c = 0; c < in.chunks.size(); ++c)
    if (facts.persistent[c]) persistent_shards += in.chunks[c].bytes / 2;
  EXPECT_GT(persistent_shards, 0u);
  EXPECT_EQ(s->moved.host_to_compute, s->gathered_total_bytes / 2 + persistent_shards);
}

}  // namespace
}  // namespace strata::plan
