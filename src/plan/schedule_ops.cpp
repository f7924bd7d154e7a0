// The schedule's vocabulary: options from config, the cost model, conversions and
// printing. The planning itself is in schedule.cpp.
#include <algorithm>
#include <limits>

#include <fmt/format.h>

#include "strata/base/units.h"
#include "strata/plan/schedule.h"

namespace strata::plan {
namespace {

std::uint64_t saturating_mul(std::uint64_t a, std::uint64_t b) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return std::numeric_limits<std::uint64_t>::max();
  return a * b;
}

}  // namespace

std::string_view to_string(OpKind k) {
  switch (k) {
    case OpKind::kLoad: return "load";
    case OpKind::kGather: return "gather";
    case OpKind::kRelease: return "release";
    case OpKind::kEvict: return "evict";
    case OpKind::kReduceScatter: return "reduce-scatter";
    case OpKind::kStep: return "step";
    case OpKind::kStore: return "store";
  }
  return "?";
}

Status ScheduleOptions::validate() const {
  if (world < 1) return make_error(ErrorCode::kInvalidArgument, "schedule: world must be >= 1, got {}", world);
  return ok();
}

Result<ScheduleOptions> ScheduleOptions::from_config(const Config& cfg, int world, std::uint32_t param_bytes) {
  if (param_bytes != 2 && param_bytes != 4)
    return make_error(ErrorCode::kInvalidArgument, "schedule: parameter bytes must be 2 or 4, got {}", param_bytes);
  const ZeroConfig& z = cfg.zero_optimization;
  const StrataConfig& s = cfg.strata;
  ScheduleOptions o;
  o.world = world;
  o.prefetch_bucket_bytes = saturating_mul(z.stage3_prefetch_bucket_size, param_bytes);
  o.max_live_bytes = saturating_mul(z.stage3_max_live_parameters, param_bytes);
  o.max_reuse_distance_elems = z.stage3_max_reuse_distance;
  o.persistence_threshold_elems = z.stage3_param_persistence_threshold;
  o.budget_bytes = {s.compute_budget, s.host_budget, s.nvme_budget};
  STRATA_RETURN_IF_ERROR(o.validate());
  return o;
}

LinkBytes& LinkBytes::operator+=(const LinkBytes& o) {
  nvme_to_host += o.nvme_to_host;
  host_to_nvme += o.host_to_nvme;
  host_to_compute += o.host_to_compute;
  compute_to_host += o.compute_to_host;
  net_gather += o.net_gather;
  net_reduce_scatter += o.net_reduce_scatter;
  net_all_reduce += o.net_all_reduce;
  return *this;
}

void add_copy(LinkBytes& l, Tier from, Tier to, std::uint64_t b) {
  // One directed copy between adjacent tiers, or both legs of compute<->nvme via host.
  if (from == to) return;
  const bool up = tier_index(to) < tier_index(from);
  const Tier lo = up ? from : to;  // the slower end
  const Tier hi = up ? to : from;
  if (lo == Tier::kNvme) (up ? l.nvme_to_host : l.host_to_nvme) += b;
  if (hi == Tier::kCompute) (up ? l.host_to_compute : l.compute_to_host) += b;
}

Tier step_tier(Tier optim_tier) { return optim_tier == Tier::kCompute ? Tier::kCompute : Tier::kHost; }

bool chunk_aliased(const ScheduleChunk& c, int world) { return world == 1 && c.shard_tier == Tier::kCompute; }

bool chunk_persistent(const ScheduleChunk& c, const ScheduleOptions& o) {
  return !c.replicated && !chunk_aliased(c, o.world) && (c.persistent || c.numel < o.persistence_threshold_elems);
}

std::vector<Op> step_ops(std::span<const ScheduleChunk> chunks, int world) {
  std::vector<Op> ops;
  const auto w = static_cast<std::uint64_t>(std::max(world, 1));
  for (ChunkId c = 0; c < chunks.size(); ++c) {
    const ScheduleChunk& ch = chunks[c];
    if (ch.grad_bytes == 0) continue;
    const Tier run = step_tier(ch);
    if (ch.optim_tier == Tier::kNvme)
      ops.push_back(Op{.kind = OpKind::kLoad, .chunk = c, .from_tier = Tier::kNvme, .to_tier = Tier::kHost,
                       .bytes = ch.optim_state_bytes, .what = StateKind::kOptimizer});
    ops.push_back(Op{.kind = OpKind::kStep, .chunk = c, .from_tier = run, .to_tier = run, .bytes = ch.optim_state_bytes,
                     .what = StateKind::kOptimizer});
    if (ch.optim_tier == Tier::kNvme)
      ops.push_back(Op{.kind = OpKind::kStore, .chunk = c, .from_tier = Tier::kHost, .to_tier = Tier::kNvme,
                       .bytes = ch.optim_state_bytes, .what = StateKind::kOptimizer});
    if (ch.shard_tier != run)
      ops.push_back(Op{.kind = OpKind::kStore, .chunk = c, .from_tier = run, .to_tier = ch.shard_tier, .bytes = ch.bytes / w});
    if (ch.replicated && w > 1)
      ops.push_back(Op{.kind = OpKind::kGather, .chunk = c, .from_tier = Tier::kCompute, .to_tier = Tier::kCompute,
                       .bytes = ch.bytes});
  }
  return ops;
}

LinkBytes link_bytes(const Op& op, int world) {
  LinkBytes l;
  const auto w = static_cast<std::uint64_t>(world);
  auto copy = [&l](Tier from, Tier to, std::uint64_t b) { add_copy(l, from, to, b); };
  switch (op.kind) {
    case OpKind::kLoad:
    case OpKind::kStore:
      copy(op.from_tier, op.to_tier, op.bytes);
      break;
    case OpKind::kGather: {
      const std::uint64_t shard = op.bytes / w;
      copy(op.from_tier, Tier::kCompute, shard);
      l.net_gather += shard * (w - 1);
      break;
    }
    case OpKind::kReduceScatter: {
      const std::uint64_t shard = op.bytes / w;
      l.net_reduce_scatter += shard * (w - 1);
      copy(Tier::kCompute, op.to_tier, shard);
      break;
    }
    case OpKind::kRelease:
    case OpKind::kEvict:
    case OpKind::kStep:
      break;
  }
  return l;
}

std::vector<ScheduleAccess> chunk_accesses(std::span<const ModuleAccess> trace,
                                           const std::map<int, std::vector<ChunkId>>& module_chunks,
                                           std::span<const std::uint32_t> open_through) {
  std::vector<ScheduleAccess> out(trace.size());
  for (std::size_t i = 0; i < trace.size(); ++i) {
    out[i].phase = trace[i].phase;
    out[i].open_through = i < open_through.size() ? open_through[i] : static_cast<std::uint32_t>(i);
    if (auto it = module_chunks.find(trace[i].module_id); it != module_chunks.end()) out[i].chunks = it->second;
  }
  return out;
}

std::vector<ScheduleChunk> schedule_chunks(const ChunkLayout& layout, std::span<const ParamInfo> params,
                                           std::uint32_t elem_bytes, int world,
                                           std::span<const Tier> shard_tiers, Tier optim_tier) {
  std::vector<ScheduleChunk> out;
  out.reserve(layout.chunks.size());
  const auto w = static_cast<std::uint64_t>(std::max(world, 1));
  for (std::size_t i = 0; i < layout.chunks.size(); ++i) {
    const Chunk& c = layout.chunks[i];
    const bool trainable = std::any_of(c.params.begin(), c.params.end(), [&](const ParamSlot& s) {
      return s.param < params.size() && params[s.param].trainable;
    });
    ScheduleChunk sc;
    sc.numel = c.size_elems;
    sc.bytes = c.size_elems * elem_bytes;
    sc.grad_bytes = trainable ? sc.bytes : 0;
    sc.shard_tier = i < shard_tiers.size() ? shard_tiers[i] : Tier::kCompute;
    sc.optim_tier = optim_tier;
    sc.optim_state_bytes = trainable ? c.size_elems / w * 12 : 0;
    sc.grad_shard_bytes = trainable ? c.size_elems / w * 4 : 0;
    sc.persistent = c.kind == ChunkKind::kPersistent;
    out.push_back(sc);
  }
  return out;
}

namespace {

std::string describe_op(const Op& op) {
  switch (op.kind) {
    case OpKind::kGather:
      return fmt::format("gather c{} from {} ({}, use {})", op.chunk, to_string(op.from_tier), format_bytes(op.bytes),
                         op.use_index);
    case OpKind::kLoad:
    case OpKind::kStore:
      return fmt::format("{} c{} {}->{} ({})", to_string(op.kind), op.chunk, to_string(op.from_tier),
                         to_string(op.to_tier), format_bytes(op.bytes));
    case OpKind::kReduceScatter:
      return fmt::format("reduce-scatter c{} to {} ({})", op.chunk, to_string(op.to_tier), format_bytes(op.bytes));
    case OpKind::kStep:
      return fmt::format("step c{} on {}", op.chunk, to_string(op.from_tier));
    case OpKind::kRelease:
    case OpKind::kEvict:
      return fmt::format("{} c{} ({})", to_string(op.kind), op.chunk, format_bytes(op.bytes));
  }
  return "?";
}

}  // namespace

std::string describe(const Schedule& s) {
  std::string out;
  for (std::size_t i = 0; i < s.accesses.size(); ++i) {
    out += fmt::format("access {}: compute {} (gathered {})\n", i, format_bytes(s.compute_bytes[i]),
                       format_bytes(s.gathered_bytes[i]));
    for (const Op& op : s.accesses[i].pre) out += "  pre  " + describe_op(op) + "\n";
    for (const Op& op : s.accesses[i].post) out += "  post " + describe_op(op) + "\n";
  }
  for (const Op& op : s.step) out += "step: " + describe_op(op) + "\n";
  const LinkBytes& m = s.moved;
  out += fmt::format(
      "moved: nvme->host {}, host->nvme {}, host->compute {}, compute->host {}, gather {}, reduce-scatter {}\n",
      format_bytes(m.nvme_to_host), format_bytes(m.host_to_nvme), format_bytes(m.host_to_compute),
      format_bytes(m.compute_to_host), format_bytes(m.net_gather), format_bytes(m.net_reduce_scatter));
  out += fmt::format("peak: compute {}, host {}, nvme {}\n", format_bytes(s.peak[0]), format_bytes(s.peak[1]),
                     format_bytes(s.peak[2]));
  return out;
}

}  // namespace strata::plan
