// Test support for the schedule: an independent replay that executes a Schedule against
// its input and checks every promise of strata/plan/schedule.h, and an exhaustive search
// for the minimum gathered bytes on small instances. Neither shares code with the planner.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "strata/plan/schedule.h"

namespace strata::plan::testing {

constexpr std::uint64_t kUnbounded = std::numeric_limits<std::uint64_t>::max();

// What the spec says about an input, recomputed from scratch.
struct Facts {
  std::vector<bool> aliased, persistent;
  std::vector<std::vector<ChunkId>> own;  // per access, deduplicated, aliased dropped
  std::vector<std::vector<ChunkId>> at;   // resident while it runs: own and those of open accesses
  std::vector<std::uint32_t> close;       // the last access begun before it ends
  std::vector<std::uint32_t> close_order; // the accesses in the order they end
  std::vector<std::uint64_t> need, cap, grad_live;
  TierBytes fixed{};
  std::uint64_t persistent_bytes = 0;
  std::vector<std::uint32_t> last_bwd;
  bool feasible = true;
};

inline Facts facts_of(const ScheduleInput& in) {
  const ScheduleOptions& o = in.options;
  const std::size_t n = in.accesses.size(), m = in.chunks.size();
  const std::uint64_t w = static_cast<std::uint64_t>(o.world);
  Facts f;
  f.aliased.assign(m, false);
  f.persistent.assign(m, false);
  f.fixed = o.fixed_bytes;
  for (std::size_t c = 0; c < m; ++c) {
    const ScheduleChunk& ch = in.chunks[c];
    f.aliased[c] = o.world == 1 && ch.shard_tier == Tier::kCompute;
    f.persistent[c] = !f.aliased[c] && (ch.persistent || ch.numel < o.persistence_threshold_elems);
    if (f.persistent[c]) f.persistent_bytes += ch.bytes;
    f.fixed[tier_index(ch.shard_tier)] += ch.bytes / w;
    f.fixed[tier_index(ch.optim_tier)] += ch.optim_state_bytes;
    f.fixed[ch.optim_tier == Tier::kCompute ? 0 : 1] += ch.grad_shard_bytes;
  }
  f.own.resize(n);
  f.at.resize(n);
  f.grad_live.assign(n, 0);
  f.last_bwd.assign(m, UINT32_MAX);
  for (std::uint32_t i = 0; i < n; ++i) f.close.push_back(std::max(i, in.accesses[i].open_through));
  f.close_order = in.close_order;
  if (f.close_order.empty())
    for (std::uint32_t i = 0; i < n; ++i) f.close_order.push_back(i);
  auto ends_before = [&](std::uint32_t a, std::uint32_t b) {  // a ends before b
    return std::find(f.close_order.begin(), f.close_order.end(), a) < std::find(f.close_order.begin(), f.close_order.end(), b);
  };
  std::vector<std::uint32_t> first_bwd(m, UINT32_MAX);
  for (std::uint32_t i = 0; i < n; ++i) {
    for (ChunkId c : in.accesses[i].chunks)
      if (!f.aliased[c] && std::find(f.own[i].begin(), f.own[i].end(), c) == f.own[i].end()) f.own[i].push_back(c);
    if (in.accesses[i].phase == Phase::kBackward)
      for (ChunkId c : in.accesses[i].chunks)  // aliased chunks included: they have grads
        if (in.chunks[c].grad_bytes > 0) {
          if (first_bwd[c] == UINT32_MAX) first_bwd[c] = i;
          if (f.last_bwd[c] == UINT32_MAX || ends_before(f.last_bwd[c], i)) f.last_bwd[c] = i;
        }
  }
  for (std::uint32_t i = 0; i < n; ++i)
    for (std::uint32_t k = 0; k <= i; ++k)  // k is open while i runs
      if (f.close[k] >= i)
        for (ChunkId c : f.own[k])
          if (std::find(f.at[i].begin(), f.at[i].end(), c) == f.at[i].end()) f.at[i].push_back(c);
  for (std::size_t c = 0; c < m; ++c) {
    if (first_bwd[c] == UINT32_MAX) continue;
    const std::uint32_t end = f.close[f.last_bwd[c]];
    std::uint32_t from = first_bwd[c];
    if (!in.grad_from.empty() && in.grad_from[c] != UINT32_MAX) from = std::min(std::max(in.grad_from[c], from), end);
    for (std::uint32_t i = from; i <= end; ++i) f.grad_live[i] += in.chunks[c].grad_bytes;
  }
  const std::uint64_t budget = o.budget_bytes[0] == 0 ? kUnbounded : o.budget_bytes[0];
  for (std::uint32_t i = 0; i < n; ++i) {
    std::uint64_t need = f.persistent_bytes;
    for (ChunkId c : f.at[i])
      if (!f.persistent[c]) need += in.chunks[c].bytes;
    f.need.push_back(need);
    const std::uint64_t other = f.fixed[0] + in.accesses[i].reserved_compute_bytes + f.grad_live[i];
    std::uint64_t avail = kUnbounded;
    if (budget != kUnbounded) {
      if (other + need > budget) f.feasible = false;
      avail = other > budget ? 0 : budget - other;
    }
    f.cap.push_back(std::min(std::max(o.max_live_bytes, need), avail));
  }
  return f;
}

// DeepSpeed's reuse rule, from the definition.
inline bool kept_after(const ScheduleInput& in, const Facts& f, ChunkId c, std::uint32_t i) {
  std::uint64_t dist = 0;
  for (std::uint32_t j = i + 1; j < f.at.size(); ++j) {
    if (dist >= in.options.max_reuse_distance_elems) return false;
    if (std::find(f.at[j].begin(), f.at[j].end(), c) != f.at[j].end()) return true;
    for (ChunkId d : f.at[j]) dist = dist > kUnbounded - in.chunks[d].numel ? kUnbounded : dist + in.chunks[d].numel;
  }
  return false;
}

// Replays the schedule; returns "" when every promise holds, else the first violation.
inline std::string replay(const ScheduleInput& in, const Schedule& s) {
  const ScheduleOptions& o = in.options;
  const Facts f = facts_of(in);
  const std::size_t n = in.accesses.size(), m = in.chunks.size();
  const std::uint64_t w = static_cast<std::uint64_t>(o.world);
  if (s.accesses.size() != n) return "wrong number of accesses";
  std::vector<bool> gathered(m, false);
  std::vector<std::uint32_t> pending_use(m, UINT32_MAX);  // a gather issued, not yet used
  LinkBytes moved;
  auto cost = [&](const Op& op) {
    // The cost model of schedule.h, written out per op kind.
    const std::uint64_t sh = op.bytes / w;
    auto leg = [&](Tier a, Tier b, std::uint64_t x) {
      if (a == Tier::kNvme && b != Tier::kNvme) moved.nvme_to_host += x;
      if (b == Tier::kNvme && a != Tier::kNvme) moved.host_to_nvme += x;
      if (b == Tier::kCompute && a != Tier::kCompute) moved.host_to_compute += x;
      if (a == Tier::kCompute && b != Tier::kCompute) moved.compute_to_host += x;
    };
    if (op.kind == OpKind::kLoad || op.kind == OpKind::kStore) leg(op.from_tier, op.to_tier, op.bytes);
    if (op.kind == OpKind::kGather) {
      leg(op.from_tier, Tier::kCompute, sh);
      moved.net_gather += sh * (w - 1);
    }
    if (op.kind == OpKind::kReduceScatter) {
      moved.net_reduce_scatter += sh * (w - 1);
      leg(Tier::kCompute, op.to_tier, sh);
    }
  };
  std::uint64_t peak_compute = 0, peak_staging = 0, staging = 0;
  const std::uint64_t budget_c = o.budget_bytes[0] == 0 ? kUnbounded : o.budget_bytes[0];
  const std::uint64_t budget_h = o.budget_bytes[1] == 0 ? kUnbounded : o.budget_bytes[1];
  std::vector<bool> staged(m, false);
  std::vector<std::uint32_t> staged_use(m, UINT32_MAX);  // the access whose gather consumes it
  std::vector<bool> closed(n, false);
  std::size_t next_close = 0;
  for (std::uint32_t i = 0; i < n; ++i) {
    const auto here = [&](ChunkId c) { return std::find(f.at[i].begin(), f.at[i].end(), c) != f.at[i].end(); };
    bool seen_gather = false;
    for (std::size_t k = 0; k < s.accesses[i].pre.size(); ++k) {
      const Op& op = s.accesses[i].pre[k];
      cost(op);
      const ChunkId c = op.chunk;
      if (c >= m) return fmt::format("access {}: op on chunk {} out of range", i, c);
      switch (op.kind) {
        case OpKind::kEvict:
          if (seen_gather) return fmt::format("access {}: evict after a gather in pre", i);
          if (!gathered[c] || f.persistent[c]) return fmt::format("access {}: evicts c{} not gathered or persistent", i, c);
          if (here(c)) return fmt::format("access {}: evicts c{} which it needs", i, c);
          if (pending_use[c] != UINT32_MAX) return fmt::format("access {}: evicts c{} prefetched for {}", i, c, pending_use[c]);
          gathered[c] = false;
          break;
        case OpKind::kLoad:
          if (in.chunks[c].shard_tier != Tier::kNvme || op.from_tier != Tier::kNvme || op.to_tier != Tier::kHost)
            return fmt::format("access {}: load of c{} not from an nvme shard", i, c);
          staged[c] = true;
          staging += op.bytes;
          break;
        case OpKind::kGather:
          seen_gather = true;
          if (gathered[c]) return fmt::format("access {}: gathers c{} already gathered", i, c);
          if (f.aliased[c]) return fmt::format("access {}: gathers aliased c{}", i, c);
          if (op.use_index < i || op.use_index >= n) return fmt::format("access {}: gather c{} use {} invalid", i, c, op.use_index);
          if (!f.persistent[c] && std::find(f.at[op.use_index].begin(), f.at[op.use_index].end(), c) == f.at[op.use_index].end())
            return fmt::format("access {}: gather c{} for access {} which does not use it", i, c, op.use_index);
          if (in.chunks[c].shard_tier == Tier::kNvme ? (!staged[c] || op.from_tier != Tier::kHost)
                                                     : op.from_tier != in.chunks[c].shard_tier)
            return fmt::format("access {}: gather c{} from the wrong tier", i, c);
          if (op.bytes != in.chunks[c].bytes) return fmt::format("access {}: gather c{} wrong size", i, c);
          gathered[c] = true;
          if (staged[c]) staged_use[c] = op.use_index;
          if (!f.persistent[c]) pending_use[c] = op.use_index;
          break;
        default:
          return fmt::format("access {}: op {} not allowed in pre", i, to_string(op.kind));
      }
    }
    std::uint64_t g_bytes = 0, ahead = 0;
    for (ChunkId c = 0; c < m; ++c) {
      if (gathered[c]) g_bytes += in.chunks[c].bytes;
      if (gathered[c] && pending_use[c] != UINT32_MAX && pending_use[c] > i) ahead += in.chunks[c].bytes;
    }
    for (ChunkId c : f.at[i]) {
      if (!gathered[c]) return fmt::format("access {}: needs c{}, not gathered", i, c);
      if (pending_use[c] == i) pending_use[c] = UINT32_MAX;
    }
    for (ChunkId c = 0; c < m; ++c)
      if (pending_use[c] != UINT32_MAX && pending_use[c] < i) return fmt::format("access {}: c{} gathered for {} never used", i, c, pending_use[c]);
    const std::uint64_t compute = f.fixed[0] + in.accesses[i].reserved_compute_bytes + f.grad_live[i] + g_bytes;
    if (compute > budget_c) return fmt::format("access {}: compute {} over budget {}", i, compute, budget_c);
    if (g_bytes > f.cap[i]) return fmt::format("access {}: gathered {} over capacity {}", i, g_bytes, f.cap[i]);
    if (ahead > o.prefetch_bucket_bytes) return fmt::format("access {}: {} prefetched over bucket {}", i, ahead, o.prefetch_bucket_bytes);
    if (f.fixed[1] + staging > budget_h) return fmt::format("access {}: host staging over budget", i);
    if (s.compute_bytes[i] != compute || s.gathered_bytes[i] != g_bytes) return fmt::format("access {}: reported bytes differ", i);
    peak_compute = std::max(peak_compute, compute);
    peak_staging = std::max(peak_staging, staging);
    // Staging is held from the load to the use of the gather it feeds.
    staging = 0;
    for (ChunkId c = 0; c < m; ++c) {
      if (staged[c] && staged_use[c] == i) staged[c] = false;
      if (staged[c]) staging += in.chunks[c].bytes / w;
    }
    // The accesses that end now, in order; each one's post: releases by the reuse rule
    // (exactly those) of chunks no open access still owns, then reduce-scatters.
    std::vector<ChunkId> freed;  // owned by an access that ended, by none still open
    for (; next_close < n && f.close[f.close_order[next_close]] == i; ++next_close) {
      const std::uint32_t k = f.close_order[next_close];
      closed[k] = true;
      auto owned_by_open = [&](ChunkId c) {
        for (std::uint32_t j = 0; j <= i; ++j)
          if (!closed[j] && std::find(f.own[j].begin(), f.own[j].end(), c) != f.own[j].end()) return true;
        return false;
      };
      for (const Op& op : s.accesses[k].post) {
        cost(op);
        const ChunkId c = op.chunk;
        const bool own = std::find(f.own[k].begin(), f.own[k].end(), c) != f.own[k].end();
        if (op.kind == OpKind::kRelease) {
          if (!gathered[c] || f.persistent[c]) return fmt::format("access {} (end of {}): releases c{} not gathered or persistent", i, k, c);
          if (pending_use[c] != UINT32_MAX) return fmt::format("access {}: releases c{} prefetched for {}", i, c, pending_use[c]);
          if (owned_by_open(c)) return fmt::format("access {} (end of {}): releases c{} an open access owns", i, k, c);
          if (own && i + 1 < n && kept_after(in, f, c, i)) return fmt::format("access {}: releases c{} within reuse distance", i, c);
          if (!own && i + 1 < n) return fmt::format("access {} (end of {}): releases c{} it did not use", i, k, c);
          gathered[c] = false;
        } else if (op.kind == OpKind::kReduceScatter) {
          if (f.last_bwd[c] != k) return fmt::format("access {}: reduce-scatter c{} not at its last backward use", k, c);
        } else {
          return fmt::format("access {}: op {} not allowed in post", k, to_string(op.kind));
        }
      }
      for (ChunkId c : f.own[k])
        if (!owned_by_open(c)) freed.push_back(c);
    }
    for (ChunkId c : freed)
      if (!f.persistent[c] && gathered[c] && (i + 1 == n || !kept_after(in, f, c, i)))
        return fmt::format("access {}: keeps c{} beyond the reuse distance", i, c);
  }
  for (ChunkId c = 0; c < m; ++c)
    if (gathered[c] && !f.persistent[c]) return fmt::format("end: c{} still gathered", c);
  for (const Op& op : s.step) cost(op);
  if (!(moved == s.moved)) return "link bytes differ from the replay";
  peak_compute = std::max(peak_compute, f.fixed[0] + f.persistent_bytes);
  if (s.peak[0] != peak_compute) return fmt::format("peak compute {} != replay {}", s.peak[0], peak_compute);
  return "";
}

// The minimum gathered bytes over every valid schedule (same capacities, same reuse-rule
// releases, persistent chunks always gathered), by dynamic programming over the set of
// gathered chunks. Needs <= 16 chunks and accesses that do not overlap. kUnbounded when
// no schedule fits.
inline std::uint64_t min_gathered_bytes(const ScheduleInput& in) {
  const Facts f = facts_of(in);
  if (!f.feasible) return kUnbounded;
  const std::size_t n = in.accesses.size(), m = in.chunks.size();
  const std::uint32_t full = 1u << m;
  std::vector<std::uint64_t> bytes_of(full, 0);
  for (std::uint32_t s = 1; s < full; ++s) {
    const int low = __builtin_ctz(s);
    bytes_of[s] = bytes_of[s & (s - 1)] + (f.persistent[low] ? 0 : in.chunks[low].bytes);
  }
  std::vector<std::uint64_t> dp(full, kUnbounded), next(full);
  dp[0] = 0;
  for (std::uint32_t i = 0; i < n; ++i) {
    std::uint32_t need = 0, release = 0;
    for (ChunkId c : f.at[i])
      if (!f.persistent[c]) {
        need |= 1u << c;
        if (i + 1 == n || !kept_after(in, f, c, i)) release |= 1u << c;
      }
    std::fill(next.begin(), next.end(), kUnbounded);
    for (std::uint32_t r = 0; r < full; ++r) {
      if (dp[r] == kUnbounded) continue;
      const std::uint64_t add = bytes_of[need & ~r];
      const std::uint32_t optional = r & ~need;
      // Keep any subset of what is gathered and not needed now.
      for (std::uint32_t keep = optional;; keep = (keep - 1) & optional) {
        const std::uint32_t now = keep | need;
        if (bytes_of[now] + f.persistent_bytes <= f.cap[i]) {
          std::uint32_t after = now & ~release;
          if (i + 1 == n) after = 0;
          next[after] = std::min(next[after], dp[r] + add);
        }
        if (keep == 0) break;
      }
    }
    dp.swap(next);
  }
  return *std::min_element(dp.begin(), dp.end());
}

}  // namespace strata::plan::testing
