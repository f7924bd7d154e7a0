// make_schedule: the demand pass (Belady + reuse-rule releases) and the prefetch pass.
// See Note [schedule model] in strata/plan/schedule.h for the rules implemented here.
#include <algorithm>
#include <cassert>
#include <limits>

#include <fmt/format.h>

#include "strata/base/units.h"
#include "strata/plan/schedule.h"

namespace strata::plan {
namespace {

constexpr std::uint64_t kInf = std::numeric_limits<std::uint64_t>::max();
constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

std::uint64_t budget_or_inf(std::uint64_t b) { return b == 0 ? kInf : b; }

// A gather of one chunk for one use; `issue` moves earlier in the prefetch pass.
struct GatherEvent {
  ChunkId chunk;
  std::uint32_t use;
  std::uint32_t issue;
  std::uint32_t prev_end;  // index into ends of the residency before this one, or kNone
};

// The end of a residency: an eviction at pre(at) (movable earlier), or a release after
// access `at` ran, in the post ops of the access whose end it follows (post_of: `at`
// itself unless accesses overlap, Note [overlapping accesses] in trace.h).
struct EndEvent {
  ChunkId chunk;
  std::uint32_t at;
  bool evict;
  std::uint32_t last_use;  // the chunk's last use before this end
  std::uint32_t post_of = 0;
};

struct Holder {
  std::string what;
  std::uint64_t bytes;
};

class Planner {
 public:
  explicit Planner(const ScheduleInput& in) : in_(in), opt_(in.options), n_(in.accesses.size()) {}

  Result<Schedule> run() {
    STRATA_RETURN_IF_ERROR(opt_.validate());
    STRATA_RETURN_IF_ERROR(prepare());
    STRATA_RETURN_IF_ERROR(demand_pass());
    STRATA_RETURN_IF_ERROR(prefetch_pass());
    return emit();
  }

 private:
  std::uint64_t shard(const ScheduleChunk& c) const { return c.bytes / static_cast<std::uint64_t>(opt_.world); }

  Status prepare() {
    const std::size_t n_chunks = in_.chunks.size();
    const auto w = static_cast<std::uint64_t>(opt_.world);
    aliased_.assign(n_chunks, false);
    persistent_.assign(n_chunks, false);
    fixed_ = opt_.fixed_bytes;
    for (ChunkId c = 0; c < n_chunks; ++c) {
      const ScheduleChunk& ch = in_.chunks[c];
      if (ch.bytes % w != 0 || ch.grad_bytes % w != 0)
        return make_error(ErrorCode::kInvalidArgument, "schedule: chunk {} has {} bytes ({} grad), not divisible by world {}",
                          c, ch.bytes, ch.grad_bytes, opt_.world);
      if (ch.replicated)
        return make_error(ErrorCode::kInvalidArgument, "schedule: chunk {} is replicated (stages 0-2 have no schedule)", c);
      aliased_[c] = chunk_aliased(ch, opt_.world);
      persistent_[c] = chunk_persistent(ch, opt_);
      if (!ch.shard_from_master) fixed_[tier_index(ch.shard_tier)] += shard(ch);
      fixed_[tier_index(ch.optim_tier)] += ch.optim_state_bytes;
      fixed_[tier_index(grad_shard_tier(ch))] += ch.grad_shard_bytes;
      if (persistent_[c]) persistent_bytes_ += ch.bytes;
    }
    STRATA_RETURN_IF_ERROR(prepare_ends());
    // Per access: its own chunks (deduplicated, aliased ones dropped), and the chunks
    // resident while it runs: its own and those of the accesses still open around it.
    own_.resize(n_);
    chunks_at_.resize(n_);
    uses_.assign(n_chunks, {});
    std::vector<std::uint32_t> first_bwd(n_chunks, kNone), last_bwd(n_chunks, kNone);
    for (std::uint32_t i = 0; i < n_; ++i) {
      std::vector<ChunkId> ids = in_.accesses[i].chunks;
      for (ChunkId c : ids)
        if (c >= n_chunks)
          return make_error(ErrorCode::kInvalidArgument, "schedule: access {} uses chunk {}, but there are {}", i, c,
                            n_chunks);
      std::sort(ids.begin(), ids.end());
      ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
      // Aliased chunks get gradients too, but are never gathered. A chunk's gradient is
      // done when the last of its backward accesses to end has ended.
      for (ChunkId c : ids)
        if (in_.accesses[i].phase == Phase::kBackward && in_.chunks[c].grad_bytes > 0) {
          if (first_bwd[c] == kNone) first_bwd[c] = i;
          if (last_bwd[c] == kNone || close_rank_[i] > close_rank_[last_bwd[c]]) last_bwd[c] = i;
        }
      std::erase_if(ids, [&](ChunkId c) { return aliased_[c]; });
      own_[i] = std::move(ids);
    }
    for (std::uint32_t k = 0; k < n_; ++k) {
      for (std::uint32_t i = k; i <= close_[k]; ++i) chunks_at_[i].insert(chunks_at_[i].end(), own_[k].begin(), own_[k].end());
    }
    prefix_elems_.assign(n_ + 1, 0);
    for (std::uint32_t i = 0; i < n_; ++i) {
      std::vector<ChunkId>& ids = chunks_at_[i];
      std::sort(ids.begin(), ids.end());
      ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
      std::uint64_t elems = 0;
      for (ChunkId c : ids) {
        uses_[c].push_back(i);
        elems += in_.chunks[c].numel;
      }
      prefix_elems_[i + 1] = std::min(kInf - elems, prefix_elems_[i]) + elems;
    }
    last_bwd_ = last_bwd;
    // Grad buffers live from the chunk's first gradient until its gradient is done.
    if (!in_.grad_from.empty() && in_.grad_from.size() != n_chunks)
      return make_error(ErrorCode::kInvalidArgument, "schedule: grad_from has {} chunks, but there are {}",
                        in_.grad_from.size(), n_chunks);
    grad_live_.assign(n_, 0);
    for (ChunkId c = 0; c < n_chunks; ++c) {
      if (first_bwd[c] == kNone) continue;
      const std::uint32_t end = close_[last_bwd[c]];
      const std::uint32_t from = in_.grad_from.empty() || in_.grad_from[c] == kNone
                                     ? first_bwd[c]
                                     : std::clamp(in_.grad_from[c], first_bwd[c], end);
      for (std::uint32_t i = from; i <= end; ++i) grad_live_[i] += in_.chunks[c].grad_bytes;
    }
    // Capacity for gathered chunks, and the hard compute budget check.
    cap_.assign(n_, 0);
    const std::uint64_t budget = budget_or_inf(opt_.budget_bytes[0]);
    for (std::uint32_t i = 0; i < n_; ++i) {
      std::uint64_t need = persistent_bytes_;
      for (ChunkId c : chunks_at_[i])
        if (!persistent_[c]) need += in_.chunks[c].bytes;
      const std::uint64_t other = fixed_[0] + in_.accesses[i].reserved_compute_bytes + grad_live_[i];
      if (budget != kInf && (other > budget || need > budget - other)) return cannot_fit(i, need);
      const std::uint64_t avail = budget == kInf ? kInf : budget - other;
      cap_[i] = std::min(std::max(opt_.max_live_bytes, need), avail);
    }
    if (n_ == 0 && budget != kInf && fixed_[0] > budget) return cannot_fit_tier(Tier::kCompute, fixed_[0]);
    const std::uint64_t nvme_budget = budget_or_inf(opt_.budget_bytes[2]);
    if (fixed_[2] > nvme_budget) return cannot_fit_tier(Tier::kNvme, fixed_[2]);
    return ok();
  }

  // Where each access ends (Note [overlapping accesses]): close_[i], the last access begun
  // before it ends; close_order_, the order they end in; close_rank_, the inverse.
  Status prepare_ends() {
    close_.resize(n_);
    for (std::uint32_t i = 0; i < n_; ++i) {
      const std::uint32_t t = in_.accesses[i].open_through;
      if (t >= n_)
        return make_error(ErrorCode::kInvalidArgument, "schedule: access {} is open through access {}, but there are {}",
                          i, t, n_);
      close_[i] = std::max(i, t);
    }
    close_order_ = in_.close_order;
    if (close_order_.empty())
      for (std::uint32_t i = 0; i < n_; ++i) close_order_.push_back(i);
    close_rank_.assign(n_, kNone);
    if (close_order_.size() != n_)
      return make_error(ErrorCode::kInvalidArgument, "schedule: close order of {} accesses, but there are {}",
                        close_order_.size(), n_);
    for (std::uint32_t r = 0; r < n_; ++r) {
      const std::uint32_t k = close_order_[r];
      if (k >= n_ || close_rank_[k] != kNone)
        return make_error(ErrorCode::kInvalidArgument, "schedule: the close order is not a permutation of the accesses");
      if (r > 0 && close_[k] < close_[close_order_[r - 1]])
        return make_error(ErrorCode::kInvalidArgument, "schedule: access {} ends after access {} in the close order, "
                          "but before it in open_through", k, close_order_[r - 1]);
      close_rank_[k] = r;
    }
    return ok();
  }

  // The error of DESIGN.md §3 "Tiers and budgets": the need, the budget, the holders.
  Status cannot_fit(std::uint32_t i, std::uint64_t need_gathered) const {
    std::vector<Holder> holders;
    for (ChunkId c = 0; c < in_.chunks.size(); ++c) {
      const ScheduleChunk& ch = in_.chunks[c];
      const bool here = std::binary_search(chunks_at_[i].begin(), chunks_at_[i].end(), c);
      if (persistent_[c] || here) holders.push_back({fmt::format("chunk {} gathered", c), ch.bytes});
      if (ch.shard_tier == Tier::kCompute) holders.push_back({fmt::format("chunk {} shard", c), shard(ch)});
      if (ch.optim_tier == Tier::kCompute && ch.optim_state_bytes > 0)
        holders.push_back({fmt::format("chunk {} optimizer state", c), ch.optim_state_bytes});
    }
    const std::uint64_t reserved = in_.accesses[i].reserved_compute_bytes;
    if (reserved > 0) holders.push_back({"reserved (activations)", reserved});
    if (grad_live_[i] > 0) holders.push_back({"grad buffers", grad_live_[i]});
    if (opt_.fixed_bytes[0] > 0) holders.push_back({"fixed", opt_.fixed_bytes[0]});
    std::stable_sort(holders.begin(), holders.end(), [](const Holder& a, const Holder& b) { return a.bytes > b.bytes; });
    std::string held;
    for (std::size_t k = 0; k < holders.size() && k < 4; ++k)
      held += fmt::format("{}{} {}", k ? ", " : "", holders[k].what, format_bytes(holders[k].bytes));
    const std::uint64_t total = need_gathered + fixed_[0] + reserved + grad_live_[i];
    return make_error(ErrorCode::kResourceExhausted,
                      "cannot fit: need {} in compute at access {} ({}), budget {}, held by {}", format_bytes(total), i,
                      to_string(in_.accesses[i].phase), format_bytes(opt_.budget_bytes[0]), held)
        .with_op("schedule");
  }

  Status cannot_fit_tier(Tier t, std::uint64_t need) const {
    std::vector<Holder> holders;
    for (ChunkId c = 0; c < in_.chunks.size(); ++c) {
      const ScheduleChunk& ch = in_.chunks[c];
      if (ch.shard_tier == t) holders.push_back({fmt::format("chunk {} shard", c), shard(ch)});
      if (ch.optim_tier == t && ch.optim_state_bytes > 0)
        holders.push_back({fmt::format("chunk {} optimizer state", c), ch.optim_state_bytes});
      if (grad_shard_tier(ch) == t && ch.grad_shard_bytes > 0)
        holders.push_back({fmt::format("chunk {} grad shard", c), ch.grad_shard_bytes});
    }
    if (opt_.fixed_bytes[tier_index(t)] > 0) holders.push_back({"fixed", opt_.fixed_bytes[tier_index(t)]});
    std::stable_sort(holders.begin(), holders.end(), [](const Holder& a, const Holder& b) { return a.bytes > b.bytes; });
    std::string held;
    for (std::size_t k = 0; k < holders.size() && k < 4; ++k)
      held += fmt::format("{}{} {}", k ? ", " : "", holders[k].what, format_bytes(holders[k].bytes));
    return make_error(ErrorCode::kResourceExhausted, "cannot fit: need {} in {}, budget {}, held by {}",
                      format_bytes(need), to_string(t), format_bytes(opt_.budget_bytes[tier_index(t)]), held)
        .with_op("schedule");
  }

  // The first use of c at or after access i, or kNone.
  std::uint32_t next_use(ChunkId c, std::uint32_t i) const {
    auto it = std::lower_bound(uses_[c].begin(), uses_[c].end(), i);
    return it == uses_[c].end() ? kNone : *it;
  }

  // DeepSpeed's reuse rule: keep c after access i if its next use j comes before the
  // chunk elements of accesses i+1 .. j-1 reach max_reuse_distance_elems.
  bool keep_after(ChunkId c, std::uint32_t i) const {
    const std::uint32_t j = next_use(c, i + 1);
    if (j == kNone) return false;
    return prefix_elems_[j] - prefix_elems_[i + 1] < opt_.max_reuse_distance_elems;
  }

  Status demand_pass() {
    const std::size_t n_chunks = in_.chunks.size();
    std::vector<bool> resident(n_chunks, false);
    std::vector<std::uint32_t> open_gather(n_chunks, kNone);  // the gather that started c's residency
    std::vector<std::uint32_t> last_end(n_chunks, kNone);
    gocc_.assign(n_, 0);
    std::uint64_t occ = 0;
    for (ChunkId c = 0; c < n_chunks; ++c)
      if (persistent_[c] && n_ > 0) {
        resident[c] = true;
        occ += in_.chunks[c].bytes;
      }
    auto end_residency = [&](ChunkId c, std::uint32_t at, bool evict, std::uint32_t last_use, std::uint32_t post_of) {
      resident[c] = false;
      occ -= in_.chunks[c].bytes;
      last_end[c] = static_cast<std::uint32_t>(ends_.size());
      ends_.push_back(EndEvent{c, at, evict, last_use, post_of});
    };
    std::vector<std::uint32_t> last_use(n_chunks, kNone);
    std::vector<std::uint32_t> holders(n_chunks, 0);  // open accesses that own the chunk
    std::uint32_t next_close = 0;                     // into close_order_
    for (std::uint32_t i = 0; i < n_; ++i) {
      std::uint64_t add = 0;
      for (ChunkId c : chunks_at_[i])
        if (!resident[c]) add += in_.chunks[c].bytes;
      while (occ + add > cap_[i]) {
        // Belady: the resident chunk not needed now whose next use is furthest away.
        ChunkId victim = kNone;
        std::uint64_t victim_next = 0;
        for (ChunkId c = 0; c < n_chunks; ++c) {
          if (!resident[c] || persistent_[c] || std::binary_search(chunks_at_[i].begin(), chunks_at_[i].end(), c)) continue;
          const std::uint32_t nu = next_use(c, i);
          const std::uint64_t key = nu == kNone ? kInf : nu;
          if (victim == kNone || key > victim_next ||
              (key == victim_next && (in_.chunks[c].bytes > in_.chunks[victim].bytes ||
                                      (in_.chunks[c].bytes == in_.chunks[victim].bytes && c > victim)))) {
            victim = c;
            victim_next = key;
          }
        }
        // prepare() checked that access i's own chunks plus the persistent ones fit.
        assert(victim != kNone);
        end_residency(victim, i, /*evict=*/true, last_use[victim], i);
      }
      for (ChunkId c : chunks_at_[i]) {
        if (resident[c]) continue;
        resident[c] = true;
        occ += in_.chunks[c].bytes;
        open_gather[c] = static_cast<std::uint32_t>(gathers_.size());
        gathers_.push_back(GatherEvent{c, i, i, last_end[c]});
      }
      gocc_[i] = occ;
      for (ChunkId c : chunks_at_[i]) last_use[c] = i;
      for (ChunkId c : own_[i]) ++holders[c];
      // The accesses that end before access i + 1 begins, in order: a chunk no open
      // access owns any more is released by the reuse rule, at the end of its last owner.
      std::uint32_t last_closed = i;
      for (; next_close < n_ && close_[close_order_[next_close]] == i; ++next_close) {
        const std::uint32_t k = last_closed = close_order_[next_close];
        for (ChunkId c : own_[k])
          if (--holders[c] == 0 && resident[c] && !persistent_[c] && (i + 1 == n_ || !keep_after(c, i)))
            end_residency(c, i, /*evict=*/false, last_use[c], k);
      }
      if (i + 1 == n_)
        for (ChunkId c = 0; c < n_chunks; ++c)
          if (resident[c] && !persistent_[c]) end_residency(c, i, /*evict=*/false, last_use[c], last_closed);
    }
    return ok();
  }

  // First access at which chunk c may be gathered again after the residency `end`.
  std::uint32_t earliest_issue(std::uint32_t end) const {
    if (end == kNone) return 0;
    return ends_[end].at + 1;
  }

  Status prefetch_pass() {
    ahead_.assign(n_, 0);
    staging_.assign(n_, 0);
    const std::uint64_t host_budget = budget_or_inf(opt_.budget_bytes[1]);
    for (const GatherEvent& g : gathers_)
      if (in_.chunks[g.chunk].shard_tier == Tier::kNvme) staging_[g.use] += shard(in_.chunks[g.chunk]);
    // Persistent chunks are gathered (so staged, when homed on nvme) at pre(0).
    for (ChunkId c = 0; c < in_.chunks.size() && n_ > 0; ++c)
      if (persistent_[c] && in_.chunks[c].shard_tier == Tier::kNvme) staging_[0] += shard(in_.chunks[c]);
    for (std::uint32_t i = 0; i < n_; ++i)
      if (fixed_[1] + staging_[i] > host_budget) return cannot_fit_tier(Tier::kHost, fixed_[1] + staging_[i]);
    if (opt_.prefetch_bucket_bytes == 0) return ok();
    for (GatherEvent& g : gathers_) {
      const ScheduleChunk& ch = in_.chunks[g.chunk];
      const bool staged = ch.shard_tier == Tier::kNvme;
      const std::uint32_t lo = earliest_issue(g.prev_end);
      while (g.issue > lo) {
        const std::uint32_t k = g.issue - 1;
        if (ahead_[k] + ch.bytes > opt_.prefetch_bucket_bytes) break;
        if (staged && fixed_[1] + staging_[k] + shard(ch) > host_budget) break;
        if (gocc_[k] + ch.bytes > cap_[k] && !make_room(k, g.use, gocc_[k] + ch.bytes - cap_[k])) break;
        gocc_[k] += ch.bytes;
        ahead_[k] += ch.bytes;
        if (staged) staging_[k] += shard(ch);
        g.issue = k;
      }
    }
    return ok();
  }

  // Moves evictions scheduled at pre(p), k < p <= use, to pre(k) until `deficit` bytes
  // are free at access k. Only chunks unused in [k, p) qualify. All or nothing.
  bool make_room(std::uint32_t k, std::uint32_t use, std::uint64_t deficit) {
    std::vector<std::uint32_t> cand;
    for (std::uint32_t e = 0; e < ends_.size(); ++e) {
      const EndEvent& ev = ends_[e];
      if (ev.evict && ev.at > k && ev.at <= use && (ev.last_use == kNone || ev.last_use < k)) cand.push_back(e);
    }
    // Furthest next use first, as in the demand pass.
    std::stable_sort(cand.begin(), cand.end(), [&](std::uint32_t a, std::uint32_t b) {
      const std::uint32_t na = next_use(ends_[a].chunk, ends_[a].at), nb = next_use(ends_[b].chunk, ends_[b].at);
      return (na == kNone ? kInf : na) > (nb == kNone ? kInf : nb);
    });
    std::uint64_t freed = 0;
    std::size_t take = 0;
    while (take < cand.size() && freed < deficit) freed += in_.chunks[ends_[cand[take++]].chunk].bytes;
    if (freed < deficit) return false;
    for (std::size_t t = 0; t < take; ++t) {
      EndEvent& ev = ends_[cand[t]];
      for (std::uint32_t a = k; a < ev.at; ++a) gocc_[a] -= in_.chunks[ev.chunk].bytes;
      ev.at = k;
    }
    return true;
  }

  Result<Schedule> emit() {
    Schedule s;
    s.accesses.resize(n_);
    if (n_ > 0)
      for (ChunkId c = 0; c < in_.chunks.size(); ++c)
        if (persistent_[c]) push_gather(s.accesses[0].pre, c, 0);
    for (const EndEvent& ev : ends_) {
      const ScheduleChunk& ch = in_.chunks[ev.chunk];
      Op op{.kind = ev.evict ? OpKind::kEvict : OpKind::kRelease, .chunk = ev.chunk, .from_tier = Tier::kCompute,
            .to_tier = ch.shard_tier, .bytes = ch.bytes, .use_index = ev.at};
      (ev.evict ? s.accesses[ev.at].pre : s.accesses[ev.post_of].post).push_back(op);
    }
    // Evictions come first in pre; then gathers, in order of use.
    std::vector<const GatherEvent*> order;
    for (const GatherEvent& g : gathers_) order.push_back(&g);
    std::stable_sort(order.begin(), order.end(), [](const GatherEvent* a, const GatherEvent* b) {
      return a->issue != b->issue ? a->issue < b->issue : a->use < b->use;
    });
    for (const GatherEvent* g : order) {
      push_gather(s.accesses[g->issue].pre, g->chunk, g->use);
      ++s.n_gathers;
      if (g->issue < g->use) ++s.n_prefetched;
    }
    for (ChunkId c = 0; c < in_.chunks.size(); ++c)
      if (const std::uint32_t i = last_bwd_[c]; i != kNone) {
        const ScheduleChunk& ch = in_.chunks[c];
        s.accesses[i].post.push_back(Op{.kind = OpKind::kReduceScatter, .chunk = c, .from_tier = Tier::kCompute,
                                        .to_tier = step_tier(ch), .bytes = ch.grad_bytes, .use_index = i});
      }
    s.step = step_ops(in_.chunks, opt_.world);
    // Totals and peaks.
    for (const AccessOps& a : s.accesses) {
      for (const Op& op : a.pre) s.moved += link_bytes(op, opt_.world);
      for (const Op& op : a.post) s.moved += link_bytes(op, opt_.world);
    }
    for (const Op& op : s.step) s.moved += link_bytes(op, opt_.world);
    for (const GatherEvent& g : gathers_) s.gathered_total_bytes += in_.chunks[g.chunk].bytes;
    s.compute_bytes.resize(n_);
    s.gathered_bytes = gocc_;
    std::uint64_t staging_peak = 0, step_state_peak = 0;
    for (std::uint32_t i = 0; i < n_; ++i) {
      s.compute_bytes[i] = fixed_[0] + in_.accesses[i].reserved_compute_bytes + grad_live_[i] + gocc_[i];
      s.peak[0] = std::max(s.peak[0], s.compute_bytes[i]);
      staging_peak = std::max(staging_peak, staging_[i]);
    }
    for (const ScheduleChunk& ch : in_.chunks)
      if (ch.optim_tier == Tier::kNvme && ch.grad_bytes > 0) step_state_peak = std::max(step_state_peak, ch.optim_state_bytes);
    // During the step: fixed state plus the persistent chunks, which stay gathered.
    s.peak[0] = std::max(s.peak[0], fixed_[0] + persistent_bytes_);
    s.peak[1] = fixed_[1] + std::max(staging_peak, step_state_peak);
    s.peak[2] = fixed_[2];
    const std::uint64_t host_budget = budget_or_inf(opt_.budget_bytes[1]);
    if (s.peak[1] > host_budget) return std::unexpected(cannot_fit_tier(Tier::kHost, s.peak[1]).error());
    const std::uint64_t compute_budget = budget_or_inf(opt_.budget_bytes[0]);
    if (s.peak[0] > compute_budget) return std::unexpected(cannot_fit_tier(Tier::kCompute, s.peak[0]).error());
    return s;
  }

  void push_gather(std::vector<Op>& ops, ChunkId c, std::uint32_t use) const {
    const ScheduleChunk& ch = in_.chunks[c];
    Tier from = ch.shard_tier;
    if (from == Tier::kNvme) {
      ops.push_back(Op{.kind = OpKind::kLoad, .chunk = c, .from_tier = Tier::kNvme, .to_tier = Tier::kHost,
                       .bytes = shard(ch), .use_index = use});
      from = Tier::kHost;
    }
    ops.push_back(Op{.kind = OpKind::kGather, .chunk = c, .from_tier = from, .to_tier = Tier::kCompute,
                     .bytes = ch.bytes, .use_index = use});
  }

  const ScheduleInput& in_;
  const ScheduleOptions& opt_;
  const std::uint32_t n_;
  std::vector<bool> aliased_, persistent_;
  TierBytes fixed_{};
  std::uint64_t persistent_bytes_ = 0;
  std::vector<std::vector<ChunkId>> own_, chunks_at_;
  std::vector<std::uint32_t> close_, close_order_, close_rank_;
  std::vector<std::vector<std::uint32_t>> uses_;
  std::vector<std::uint32_t> last_bwd_;
  std::vector<std::uint64_t> prefix_elems_, grad_live_, cap_, gocc_, ahead_, staging_;
  std::vector<GatherEvent> gathers_;
  std::vector<EndEvent> ends_;
};

}  // namespace

Result<Schedule> make_schedule(const ScheduleInput& in) {
  if (in.accesses.size() >= std::numeric_limits<std::uint32_t>::max())
    return make_error(ErrorCode::kOutOfRange, "schedule: {} accesses is too many", in.accesses.size());
  return Planner(in).run();
}

}  // namespace strata::plan
