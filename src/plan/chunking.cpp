// Chunk packing and Gemini's chunk-size search; see strata/plan/chunking.h.
#include "strata/plan/chunking.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>
#include <map>

namespace strata::plan {
namespace {

constexpr std::uint64_t kNever = std::numeric_limits<std::uint64_t>::max();

std::uint64_t align_up(std::uint64_t n, std::uint64_t align) {
  if (n == 0) return align;  // a chunk is never empty
  return (n + align - 1) / align * align;
}

// Which parameters are used at least `gap` accesses apart within one phase.
std::vector<bool> far_reused(std::size_t n_params, std::span<const ParamAccess> uses, std::uint32_t gap) {
  std::vector<bool> out(n_params, false);
  if (gap == 0) return out;
  std::vector<std::uint64_t> last[2] = {std::vector<std::uint64_t>(n_params, kNever),
                                        std::vector<std::uint64_t>(n_params, kNever)};
  for (std::size_t i = 0; i < uses.size(); ++i) {
    auto& seen = last[static_cast<int>(uses[i].phase)];
    for (std::uint32_t p : uses[i].params) {
      if (seen[p] != kNever && i - seen[p] >= gap) out[p] = true;
      seen[p] = i;
    }
  }
  return out;
}

// Builds chunks in order; keeps the invariants of ChunkLayout (where/offsets/used).
class Packer {
 public:
  Packer(std::span<const ParamInfo> params, ChunkLayout& out) : params_(params), out_(out) {
    out_.where.assign(params.size(), ParamLocation{});
  }

  // A chunk holding exactly one parameter.
  void own_chunk(std::uint32_t p, ChunkKind kind) {
    Chunk c{.kind = kind, .size_elems = align_up(params_[p].numel, out_.align_elems)};
    place(c, static_cast<std::uint32_t>(out_.chunks.size()), p);
    out_.chunks.push_back(std::move(c));
  }

  // Sequential fill of chunks of capacity `cap`; `open` names the open chunk of this stream.
  void fill(std::uint32_t p, std::uint64_t cap, ChunkKind kind, std::uint64_t& open) {
    const std::uint64_t n = params_[p].numel;
    if (open == kNever || out_.chunks[open].used_elems + n > cap) {
      open = out_.chunks.size();
      out_.chunks.push_back(Chunk{.kind = kind, .size_elems = cap});
    }
    place(out_.chunks[open], static_cast<std::uint32_t>(open), p);
  }

 private:
  void place(Chunk& c, std::uint32_t id, std::uint32_t p) {
    const std::uint64_t n = params_[p].numel;
    c.params.push_back(ParamSlot{.param = p, .offset_elems = c.used_elems, .numel = n});
    out_.where[p] = ParamLocation{.chunk = id, .offset_elems = c.used_elems, .numel = n};
    c.used_elems += n;
    assert(c.used_elems <= c.size_elems);
  }

  std::span<const ParamInfo> params_;
  ChunkLayout& out_;
};

}  // namespace

std::string_view to_string(ChunkKind k) {
  switch (k) {
    case ChunkKind::kShared: return "shared";
    case ChunkKind::kOversized: return "oversized";
    case ChunkKind::kPrivate: return "private";
    case ChunkKind::kPersistent: return "persistent";
  }
  return "?";
}

Status ChunkingOptions::validate() const {
  if (world < 1) return make_error(ErrorCode::kInvalidArgument, "chunking: world must be >= 1, got {}", world);
  if (io_align_elems < 1) return make_error(ErrorCode::kInvalidArgument, "chunking: io_align_elems must be >= 1");
  if (chunk_size_elems == 0 && search_step_elems == 0)
    return make_error(ErrorCode::kInvalidArgument, "chunking: search_step_elems must be >= 1 to search");
  return ok();
}

Result<ChunkingOptions> ChunkingOptions::from_config(const Config& cfg, int world, std::uint64_t io_align_elems,
                                                    std::uint64_t hidden_elems) {
  ChunkingOptions o;
  o.world = world;
  o.io_align_elems = io_align_elems;
  o.chunk_size_elems = cfg.strata.chunk_size;
  o.search_range_elems = cfg.strata.chunk_search_range;
  o.search_step_elems = hidden_elems;
  if (cfg.zero_optimization.stage == 3)
    o.persistence_threshold_elems = cfg.zero_optimization.stage3_param_persistence_threshold;
  STRATA_RETURN_IF_ERROR(o.validate());
  return o;
}

std::vector<std::uint32_t> first_use_order(std::size_t n_params, std::span<const ParamAccess> uses) {
  std::vector<std::uint64_t> first(n_params, kNever);
  std::uint64_t seq = 0;
  for (const ParamAccess& a : uses)
    for (std::uint32_t p : a.params)
      if (p < n_params && first[p] == kNever) first[p] = seq++;
  std::vector<std::uint32_t> order(n_params);
  for (std::uint32_t i = 0; i < n_params; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) { return first[a] < first[b]; });
  return order;
}

std::uint64_t packing_waste(std::span<const std::uint64_t> sizes, std::uint64_t capacity_elems,
                            std::uint64_t align_elems) {
  std::uint64_t waste = 0;
  std::uint64_t used = 0;
  bool open = false;
  for (std::uint64_t s : sizes) {
    if (s > capacity_elems) {
      waste += align_up(s, align_elems) - s;
    } else if (!open || used + s > capacity_elems) {
      if (open) waste += capacity_elems - used;
      open = true;
      used = s;
    } else {
      used += s;
    }
  }
  if (open) waste += capacity_elems - used;
  return waste;
}

Result<ChunkSearch> search_chunk_size(std::span<const std::uint64_t> sizes, const ChunkingOptions& opt) {
  STRATA_RETURN_IF_ERROR(opt.validate());
  STRATA_ASSIGN_OR_RETURN(const std::uint64_t align, alignment_elems(opt.world, opt.io_align_elems));
  std::uint64_t start = 1;
  if (!sizes.empty()) {
    double upper = std::numeric_limits<double>::infinity();
    if (opt.filter_outliers && sizes.size() >= 2) {
      double mean = 0, sq = 0;
      for (std::uint64_t s : sizes) mean += static_cast<double>(s);
      mean /= static_cast<double>(sizes.size());
      for (std::uint64_t s : sizes) sq += (static_cast<double>(s) - mean) * (static_cast<double>(s) - mean);
      upper = mean + 3.0 * std::sqrt(sq / static_cast<double>(sizes.size()));
    }
    // The minimum is always <= the mean, so at least one size survives the filter.
    start = 0;
    for (std::uint64_t s : sizes)
      if (static_cast<double>(s) <= upper) start = std::max(start, s);
    start = std::max<std::uint64_t>(start, 1);
  }
  std::uint64_t range = opt.search_range_elems;
  if (opt.max_chunk_elems > 0) range = std::min(range, opt.max_chunk_elems > start ? opt.max_chunk_elems - start : 0);
  const std::uint64_t n = range / opt.search_step_elems + 1;
  if (n > opt.max_candidates)
    return make_error(ErrorCode::kInvalidArgument,
                      "chunk search: range {} / step {} gives {} candidates, more than {}; raise the step",
                      range, opt.search_step_elems, n, opt.max_candidates);
  ChunkSearch best{.chunk_size_elems = 0, .waste_elems = kNever, .n_candidates = n};
  std::uint64_t prev_cap = 0;
  for (std::uint64_t k = 0; k < n; ++k) {
    const std::uint64_t cap = align_up(start + k * opt.search_step_elems, align);
    if (cap == prev_cap) continue;  // same aligned capacity, same waste
    prev_cap = cap;
    const std::uint64_t w = packing_waste(sizes, cap, align);
    if (w < best.waste_elems) {
      best.waste_elems = w;
      best.chunk_size_elems = cap;
    }
  }
  return best;
}

Result<ChunkLayout> pack_chunks(std::span<const ParamInfo> params, std::span<const ParamAccess> uses,
                                const ChunkingOptions& opt) {
  STRATA_RETURN_IF_ERROR(opt.validate());
  if (params.size() > std::numeric_limits<std::uint32_t>::max())
    return make_error(ErrorCode::kOutOfRange, "chunking: {} parameters is too many", params.size());
  for (std::size_t i = 0; i < uses.size(); ++i)
    for (std::uint32_t p : uses[i].params)
      if (p >= params.size())
        return make_error(ErrorCode::kInvalidArgument, "chunking: access {} uses parameter {}, but there are {}", i,
                          p, params.size());
  ChunkLayout out;
  STRATA_ASSIGN_OR_RETURN(out.align_elems, alignment_elems(opt.world, opt.io_align_elems));
  out.order = first_use_order(params.size(), uses);
  const std::vector<bool> far = far_reused(params.size(), uses, opt.private_min_gap);
  auto persistent = [&](std::uint32_t p) {
    return opt.persistence_threshold_elems > 0 && params[p].numel < opt.persistence_threshold_elems;
  };
  auto is_private = [&](std::uint32_t p) { return !persistent(p) && far[p] && params[p].numel > 0; };

  // The shared stream: everything neither persistent nor private, in first-use order.
  std::vector<std::uint64_t> shared_sizes;
  std::uint64_t max_persistent = 0;
  for (std::uint32_t p : out.order) {
    if (persistent(p)) max_persistent = std::max(max_persistent, params[p].numel);
    else if (!is_private(p)) shared_sizes.push_back(params[p].numel);
  }
  if (opt.chunk_size_elems > 0) {
    out.chunk_size_elems = align_up(opt.chunk_size_elems, out.align_elems);
  } else if (!shared_sizes.empty()) {
    STRATA_ASSIGN_OR_RETURN(ChunkSearch found, search_chunk_size(shared_sizes, opt));
    out.chunk_size_elems = found.chunk_size_elems;
    out.n_candidates = found.n_candidates;
  } else {
    out.chunk_size_elems = align_up(max_persistent, out.align_elems);
  }
  const std::uint64_t cap = out.chunk_size_elems;

  Packer packer(params, out);
  // Persistent chunks first: they are gathered for the whole step, so keep them together.
  std::uint64_t open_persistent = kNever;
  for (std::uint32_t p : out.order) {
    if (!persistent(p)) continue;
    if (params[p].numel > cap) packer.own_chunk(p, ChunkKind::kPersistent);
    else packer.fill(p, cap, ChunkKind::kPersistent, open_persistent);
  }
  // The last persistent chunk holds only what is left: shrink it to fit.
  if (open_persistent != kNever) {
    Chunk& last = out.chunks[open_persistent];
    last.size_elems = align_up(last.used_elems, out.align_elems);
  }
  std::uint64_t open_shared = kNever;
  for (std::uint32_t p : out.order) {
    if (persistent(p)) continue;
    if (is_private(p)) packer.own_chunk(p, ChunkKind::kPrivate);
    else if (params[p].numel > cap) packer.own_chunk(p, ChunkKind::kOversized);
    else packer.fill(p, cap, ChunkKind::kShared, open_shared);
  }
  for (const Chunk& c : out.chunks) {
    out.used_elems += c.used_elems;
    out.capacity_elems += c.size_elems;
  }
  out.padding_elems = out.capacity_elems - out.used_elems;
  out.waste_ratio = out.capacity_elems == 0 ? 0.0
                                            : static_cast<double>(out.padding_elems) /
                                                  static_cast<double>(out.capacity_elems);
  return out;
}

std::vector<std::uint32_t> chunks_of(const ChunkLayout& layout, std::span<const std::uint32_t> params) {
  std::vector<std::uint32_t> ids;
  for (std::uint32_t p : params)
    if (p < layout.where.size() && layout.where[p].numel > 0) ids.push_back(layout.where[p].chunk);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

std::uint64_t chunk_size_cap(const ChunkCapInput& in) {
  std::uint64_t cap = std::max<std::uint64_t>(1, in.model_elems / kMinChunksPerModel);
  const std::uint64_t elem = std::max<std::uint64_t>(1, in.elem_bytes);
  if (in.compute_budget_bytes > 0) cap = std::min(cap, in.compute_budget_bytes / 4 / elem);
  if (in.stage == 3 && in.prefetch_bucket_bytes > 0) cap = std::min(cap, in.prefetch_bucket_bytes / elem);
  if (in.stage >= 2 && in.reduce_bucket_elems > 0) cap = std::min(cap, in.reduce_bucket_elems);
  return std::max<std::uint64_t>(1, cap);
}

}  // namespace strata::plan
