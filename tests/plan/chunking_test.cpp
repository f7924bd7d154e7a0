// Chunk packing: layout invariants on random instances, the size search against a
// brute-force minimum, first-use order, private and persistent chunks, outliers.
#include <algorithm>
#include <cmath>
#include <random>

#include <gtest/gtest.h>

#include "strata/plan/chunking.h"
#include "support/property_scale.h"

namespace strata::plan {
namespace {

using strata::testing::kPropertyScale;

std::vector<ParamInfo> of(const std::vector<std::uint64_t>& sizes) {
  std::vector<ParamInfo> p;
  for (std::uint64_t s : sizes) p.push_back({.numel = s});
  return p;
}

// Independent reference: pack into explicit chunk lists and add up their padding.
std::uint64_t reference_waste(const std::vector<std::uint64_t>& sizes, std::uint64_t cap, std::uint64_t align) {
  std::vector<std::uint64_t> used;  // shared chunks, capacity cap
  std::uint64_t own_padding = 0;
  for (std::uint64_t s : sizes) {
    if (s > cap) {
      const std::uint64_t size = std::max<std::uint64_t>(1, (s + align - 1) / align) * align;
      own_padding += size - s;
    } else if (used.empty() || used.back() + s > cap) {
      used.push_back(s);
    } else {
      used.back() += s;
    }
  }
  std::uint64_t w = own_padding;
  for (std::uint64_t u : used) w += cap - u;
  return w;
}

TEST(Chunking, SearchFindsTheBruteForceMinimumWaste) {
  std::mt19937_64 rng(11);
  for (int t = 0; t < 2000 / kPropertyScale; ++t) {
    const std::size_t n = 1 + rng() % 40;
    std::vector<std::uint64_t> sizes;
    for (std::size_t i = 0; i < n; ++i) sizes.push_back(rng() % 5 == 0 ? 1 + rng() % 5000 : 1 + rng() % 300);
    ChunkingOptions opt{.world = 1 + static_cast<int>(rng() % 4), .io_align_elems = 1 + rng() % 16,
                        .search_range_elems = rng() % 3000, .search_step_elems = 1 + rng() % 200,
                        .filter_outliers = rng() % 2 == 0};
    if (rng() % 3 == 0) opt.max_chunk_elems = 1 + rng() % 4000;
    auto found = search_chunk_size(sizes, opt);
    ASSERT_TRUE(found.has_value()) << found.error();
    const std::uint64_t align = *alignment_elems(opt.world, opt.io_align_elems);
    // The search space, from the definition: from the largest non-outlier up by steps.
    double mean = 0, var = 0;
    for (auto s : sizes) mean += static_cast<double>(s);
    mean /= static_cast<double>(n);
    for (auto s : sizes) var += (static_cast<double>(s) - mean) * (static_cast<double>(s) - mean);
    const double limit = opt.filter_outliers && n >= 2 ? mean + 3 * std::sqrt(var / static_cast<double>(n)) : 1e300;
    std::uint64_t start = 1;
    for (auto s : sizes)
      if (static_cast<double>(s) <= limit) start = std::max(start, s);
    std::uint64_t best = UINT64_MAX, best_cap = 0;
    for (std::uint64_t s = start; s <= start + opt.search_range_elems; s += opt.search_step_elems) {
      if (opt.max_chunk_elems != 0 && s > opt.max_chunk_elems && s != start) break;  // the bound, m always kept
      const std::uint64_t cap = (s + align - 1) / align * align;
      const std::uint64_t w = reference_waste(sizes, cap, align);
      if (w < best || (w == best && cap < best_cap)) best = w, best_cap = cap;
    }
    EXPECT_EQ(found->waste_elems, best) << "t=" << t;
    EXPECT_EQ(found->chunk_size_elems, best_cap) << "t=" << t;
    EXPECT_EQ(packing_waste(sizes, found->chunk_size_elems, align), best);
  }
}

// Every parameter placed once, inside its chunk, without overlap; sizes aligned;
// totals consistent; the shared stream in first-use order.
void check_layout(const ChunkLayout& l, const std::vector<ParamInfo>& params, const ChunkingOptions& opt) {
  ASSERT_EQ(l.where.size(), params.size());
  std::vector<int> seen(params.size(), 0);
  std::uint64_t used = 0, cap = 0;
  for (std::uint32_t id = 0; id < l.chunks.size(); ++id) {
    const Chunk& c = l.chunks[id];
    EXPECT_EQ(c.size_elems % l.align_elems, 0u);
    EXPECT_EQ(c.shard_elems(opt.world) * static_cast<std::uint64_t>(opt.world), c.size_elems);
    if (c.kind == ChunkKind::kShared) {
      EXPECT_EQ(c.size_elems, l.chunk_size_elems);
    }
    std::uint64_t off = 0;
    for (const ParamSlot& s : c.params) {
      EXPECT_EQ(s.offset_elems, off);
      EXPECT_EQ(s.numel, params[s.param].numel);
      EXPECT_EQ(l.where[s.param].chunk, id);
      EXPECT_EQ(l.where[s.param].offset_elems, s.offset_elems);
      ++seen[s.param];
      off += s.numel;
    }
    EXPECT_EQ(off, c.used_elems);
    EXPECT_LE(c.used_elems, c.size_elems);
    if (c.kind != ChunkKind::kShared && c.kind != ChunkKind::kPersistent) {
      EXPECT_EQ(c.params.size(), 1u);
    }
    used += c.used_elems;
    cap += c.size_elems;
  }
  for (int s : seen) EXPECT_EQ(s, 1);
  EXPECT_EQ(l.used_elems, used);
  EXPECT_EQ(l.capacity_elems, cap);
  EXPECT_EQ(l.padding_elems, cap - used);
  EXPECT_DOUBLE_EQ(l.waste_ratio, cap ? static_cast<double>(cap - used) / static_cast<double>(cap) : 0.0);
  // Shared chunks follow the first-use order, and so do params within them.
  std::vector<std::size_t> pos(params.size());
  for (std::size_t i = 0; i < l.order.size(); ++i) pos[l.order[i]] = i;
  std::size_t last = 0;
  bool any = false;
  for (const Chunk& c : l.chunks)
    if (c.kind == ChunkKind::kShared)
      for (const ParamSlot& s : c.params) {
        if (any) {
          EXPECT_GT(pos[s.param], last);
        }
        last = pos[s.param];
        any = true;
      }
}

TEST(Chunking, RandomLayoutsKeepTheirInvariants) {
  std::mt19937_64 rng(12);
  for (int t = 0; t < 1500 / kPropertyScale; ++t) {
    const std::size_t n = 1 + rng() % 50;
    std::vector<ParamInfo> params;
    for (std::size_t i = 0; i < n; ++i)
      params.push_back({.numel = rng() % 10 == 0 ? 0 : 1 + rng() % (rng() % 4 == 0 ? 20000 : 500),
                        .trainable = rng() % 5 != 0});
    std::vector<ParamAccess> uses;
    const std::size_t n_uses = rng() % 30;
    for (std::size_t i = 0; i < n_uses; ++i) {
      ParamAccess a{.phase = i < n_uses / 2 ? Phase::kForward : Phase::kBackward};
      for (std::size_t k = rng() % 4; k > 0; --k) a.params.push_back(static_cast<std::uint32_t>(rng() % n));
      uses.push_back(a);
    }
    ChunkingOptions opt{.world = 1 + static_cast<int>(rng() % 8), .io_align_elems = 1 + rng() % 64,
                        .chunk_size_elems = rng() % 3 == 0 ? 1 + rng() % 2000 : 0, .search_range_elems = rng() % 5000,
                        .search_step_elems = 1 + rng() % 256, .persistence_threshold_elems = rng() % 2 ? 50u : 0u,
                        .private_min_gap = static_cast<std::uint32_t>(rng() % 3 ? 0 : 1 + rng() % 8)};
    auto l = pack_chunks(params, uses, opt);
    ASSERT_TRUE(l.has_value()) << l.error();
    check_layout(*l, params, opt);
    if (::testing::Test::HasFailure()) FAIL() << "t=" << t;
  }
}

TEST(Chunking, FirstUseOrderFromTheTrace) {
  const std::vector<ParamAccess> uses = {{.params = {3, 1}}, {.params = {1, 0}}, {.params = {3}}};
  EXPECT_EQ(first_use_order(5, uses), (std::vector<std::uint32_t>{3, 1, 0, 2, 4}));
  EXPECT_EQ(first_use_order(3, {}), (std::vector<std::uint32_t>{0, 1, 2}));  // no trace: registration order
  auto l = pack_chunks(of({10, 10, 10, 10, 10}), uses, ChunkingOptions{.chunk_size_elems = 20});
  ASSERT_TRUE(l.has_value());
  ASSERT_EQ(l->chunks.size(), 3u);
  EXPECT_EQ(l->chunks[0].params[0].param, 3u);
  EXPECT_EQ(l->chunks[0].params[1].param, 1u);
  EXPECT_EQ(chunks_of(*l, std::vector<std::uint32_t>{0, 3, 1}), (std::vector<std::uint32_t>{0, 1}));
}

TEST(Chunking, TiedEmbeddingGetsAPrivateChunk) {
  // wte (param 0) is used by the first and the last forward access, blocks in between.
  std::vector<ParamAccess> uses = {{.params = {0}}};
  for (std::uint32_t b = 1; b <= 6; ++b) uses.push_back({.params = {b}});
  uses.push_back({.params = {0}});
  const auto params = of({5000, 100, 100, 100, 100, 100, 100});
  auto l = pack_chunks(params, uses, ChunkingOptions{.chunk_size_elems = 300, .private_min_gap = 4});
  ASSERT_TRUE(l.has_value());
  const Chunk& wte = l->chunks[l->where[0].chunk];
  EXPECT_EQ(wte.kind, ChunkKind::kPrivate);
  EXPECT_EQ(wte.size_elems, 5000u);
  EXPECT_EQ(l->chunks.size(), 3u);  // private + two shared chunks of three blocks
  // A gap below the threshold does not make it private (it is oversized instead).
  l = pack_chunks(params, uses, ChunkingOptions{.chunk_size_elems = 300, .private_min_gap = 8});
  ASSERT_TRUE(l.has_value());
  EXPECT_EQ(l->chunks[l->where[0].chunk].kind, ChunkKind::kOversized);
}

TEST(Chunking, SmallParamsGoToPersistentChunksFirst) {
  auto l = pack_chunks(of({1000, 8, 1000, 8, 8}), {},
                       ChunkingOptions{.io_align_elems = 4, .chunk_size_elems = 2000, .persistence_threshold_elems = 10});
  ASSERT_TRUE(l.has_value());
  ASSERT_EQ(l->chunks.size(), 2u);
  EXPECT_EQ(l->chunks[0].kind, ChunkKind::kPersistent);
  EXPECT_EQ(l->chunks[0].used_elems, 24u);
  EXPECT_EQ(l->chunks[0].size_elems, 24u);  // shrunk to fit
  EXPECT_EQ(l->chunks[1].used_elems, 2000u);
}

TEST(Chunking, OutliersDoNotSetTheSearchStart) {
  std::vector<std::uint64_t> sizes(30, 100);
  sizes.push_back(1'000'000);  // an embedding far above mean + 3 sigma
  ChunkingOptions opt{.search_range_elems = 1000, .search_step_elems = 100};
  auto found = search_chunk_size(sizes, opt);
  ASSERT_TRUE(found.has_value());
  EXPECT_LE(found->chunk_size_elems, 1100u);
  EXPECT_EQ(found->waste_elems, 0u);  // 30 x 100 fills 1000- or 3000-element chunks exactly
  opt.filter_outliers = false;
  found = search_chunk_size(sizes, opt);
  ASSERT_TRUE(found.has_value());
  EXPECT_GE(found->chunk_size_elems, 1'000'000u);
  auto l = pack_chunks(of(sizes), {}, ChunkingOptions{.search_range_elems = 1000, .search_step_elems = 100});
  ASSERT_TRUE(l.has_value());
  EXPECT_EQ(l->chunks.back().kind, ChunkKind::kOversized);
}

TEST(Chunking, AlignmentIsTheLcmOfWorldAndIo) {
  auto l = pack_chunks(of({1000, 3000}), {}, ChunkingOptions{.world = 6, .io_align_elems = 4, .chunk_size_elems = 3000});
  ASSERT_TRUE(l.has_value());
  EXPECT_EQ(l->align_elems, 12u);
  EXPECT_EQ(l->chunk_size_elems, 3000u);  // already a multiple of 12
  EXPECT_EQ(l->chunks.size(), 2u);
  l = pack_chunks(of({1000}), {}, ChunkingOptions{.world = 8, .io_align_elems = 512, .chunk_size_elems = 1000});
  EXPECT_EQ(l->chunk_size_elems, 1024u);
}

TEST(Chunking, OptionsFromConfig) {
  Config cfg;
  cfg.strata.chunk_size = 4096;
  cfg.zero_optimization.stage = 3;
  auto o = ChunkingOptions::from_config(cfg, 4, 2048, 768);
  ASSERT_TRUE(o.has_value()) << o.error();
  EXPECT_EQ(o->chunk_size_elems, 4096u);
  EXPECT_EQ(o->search_step_elems, 768u);
  EXPECT_EQ(o->persistence_threshold_elems, cfg.zero_optimization.stage3_param_persistence_threshold);
  cfg.zero_optimization.stage = 2;
  EXPECT_EQ(ChunkingOptions::from_config(cfg, 4, 2048, 768)->persistence_threshold_elems, 0u);
  EXPECT_FALSE(ChunkingOptions::from_config(cfg, 0, 2048, 768).has_value());
}

// Note [chunk granularity]: the least of the model / 8, a quarter of the budget, the
// prefetch bucket (stage 3) and the reduce bucket (stages 2-3).
TEST(Chunking, SizeCap) {
  const std::uint64_t model = 80'000'000;
  EXPECT_EQ(chunk_size_cap({.model_elems = model, .stage = 0}), model / 8);
  EXPECT_EQ(chunk_size_cap({.model_elems = model, .stage = 1, .elem_bytes = 2, .compute_budget_bytes = 16'000'000}),
            2'000'000u);
  EXPECT_EQ(chunk_size_cap({.model_elems = model, .stage = 3, .elem_bytes = 2, .prefetch_bucket_bytes = 8'000'000}),
            4'000'000u);
  EXPECT_EQ(chunk_size_cap({.model_elems = model, .stage = 2, .elem_bytes = 2, .prefetch_bucket_bytes = 8'000'000}),
            model / 8);  // no prefetching below stage 3
  EXPECT_EQ(chunk_size_cap({.model_elems = model, .stage = 2, .reduce_bucket_elems = 1'000'000}), 1'000'000u);
  EXPECT_EQ(chunk_size_cap({.model_elems = model, .stage = 1, .reduce_bucket_elems = 1'000'000}), model / 8);
  EXPECT_EQ(chunk_size_cap({.model_elems = 3, .stage = 3}), 1u);  // never zero
}

TEST(Chunking, BadInputIsAnError) {
  EXPECT_FALSE(pack_chunks(of({1}), std::vector<ParamAccess>{{.params = {4}}}, {}).has_value());
  EXPECT_FALSE(pack_chunks(of({1}), {}, ChunkingOptions{.world = 0}).has_value());
  EXPECT_FALSE(pack_chunks(of({1}), {}, ChunkingOptions{.search_step_elems = 0}).has_value());
  auto r = search_chunk_size(std::vector<std::uint64_t>{5}, ChunkingOptions{.search_range_elems = 1ull << 40, .search_step_elems = 1});
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("raise the step"), std::string::npos);
}

}  // namespace
}  // namespace strata::plan
