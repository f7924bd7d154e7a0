// The movement schedule: for each traced access, which chunks to gather, release, evict
// and load, and when; plus the bytes it will move per link and the peak per tier.
//
//   plan::ScheduleInput in;
//   in.chunks = plan::schedule_chunks(layout, elem_bytes, /*world=*/2, homes);  // sizes, tiers
//   in.accesses = plan::chunk_accesses(trace.accesses(), module_chunks);        // from the trace
//   STRATA_ASSIGN_OR_RETURN(in.options, plan::ScheduleOptions::from_config(cfg, 2, elem_bytes));
//   STRATA_ASSIGN_OR_RETURN(plan::Schedule s, plan::make_schedule(in));
//   for (std::size_t i = 0; i < s.accesses.size(); ++i) {   // the engine, at access i:
//     for (const plan::Op& op : s.accesses[i].pre) execute(op);   // before module i runs
//     wait_for_gathers_used_at(i); run_module(i);
//     for (const plan::Op& op : s.accesses[i].post) execute(op);  // after it ran
//   }
//   for (const plan::Op& op : s.step) execute(op);                // the optimizer step
//   // s.moved: predicted bytes per link; s.peak: predicted peak bytes per tier
//
// Model (Note [schedule model]). Each chunk c has a gathered size bytes_c (compute dtype,
// padded) and this rank's shard of bytes_c / world, which lives for the whole step in its
// home tier (shard_tier). Access i needs every chunk of accesses[i].chunks gathered in
// the compute tier while module i runs. Persistent chunks (flagged, or numel <
// persistence_threshold) are gathered at pre(0) and never released. With world == 1 a
// chunk homed on compute is its own gathered copy ("aliased"): never gathered, released
// or counted twice. In backward a chunk's full grad buffer (grad_bytes) is live from its
// first to its last backward access; after the last, it is reduce-scattered.
//
// Accesses may overlap (Note [overlapping accesses] in trace.h: an enclosing module, a
// backward that recomputes checkpointed forwards). Access k then needs its chunks at
// every access that begins while it is open (k .. open_through_k), its post ops run when
// it ends (close_order), and a chunk's grad buffer lives until the last of its backward
// accesses to end has ended; that access's post reduce-scatters it. Without overlaps
// each access ends right after it ran. A grad buffer is taken when the chunk's first
// gradient arrives: at its first backward access, or later where the input says so
// (ScheduleInput::grad_from: a parameter used by several units, a tied weight, gets its
// summed gradient only at the last of their backward accesses; Note [gradient arrival]
// in src/engine/access_driver.cpp).
//
// Policy, in two passes:
//  1. Demand pass. At pre(i) the missing chunks of access i are gathered. If they do not
//     fit the gathered-bytes capacity of access i (below), resident chunks not used by
//     access i are evicted by furthest next use (Belady; ties: larger first, then higher
//     id). When access k ends after access i ran, each chunk of k that no open access
//     still needs and whose next use is not within the reuse window is released, in
//     post(k): DeepSpeed's rule, the next use j is within the window when the chunk
//     elements of accesses i+1 .. j-1 sum to less than max_reuse_distance_elems. After
//     the last access everything not persistent is released (the step changes
//     parameters).
//  2. Prefetch pass. Each gather, in order of use, is moved to the earliest access whose
//     capacity, prefetch bucket and host staging still fit it at every access until its
//     use, and not before the chunk's previous release or eviction. Evictions may move
//     earlier with it, to accesses where the evicted chunk is no longer used. The set of
//     gathers and evictions does not change, so the bytes moved are the demand pass's.
// Capacity for gathered chunks at access i: min(max(max_live_bytes, need_i),
// compute_budget - fixed compute bytes - reserved_i - live grad buffers_i), where need_i
// is the bytes of the persistent chunks plus access i's chunks. The compute budget is
// hard: if need_i does not fit it, make_schedule fails ("cannot fit: ..."). max_live is
// soft: one access may exceed it by its own chunks, as in DeepSpeed.
//
// Optimality (tested against an exhaustive search): for chunks of equal size whose
// shards share one home tier, the number of gathers (so the bytes on every link) is the
// minimum over every schedule that satisfies the same per-access capacities and releases
// by the same reuse rule. With unequal sizes Belady is a heuristic (generalized caching
// is NP-hard); the schedule is still valid and within budget.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "strata/base/config.h"
#include "strata/base/status.h"
#include "strata/plan/chunking.h"
#include "strata/plan/tier.h"
#include "strata/plan/trace.h"

namespace strata::plan {

using ChunkId = std::uint32_t;

struct ScheduleChunk {
  std::uint64_t bytes = 0;       // gathered size in the compute dtype, padded; divisible by world
  std::uint64_t numel = 0;       // gathered elements (reuse distance, persistence threshold)
  std::uint64_t grad_bytes = 0;  // full grad buffer in backward; 0 = frozen, no reduce-scatter
  Tier shard_tier = Tier::kCompute;  // home of this rank's parameter shard
  // Where the optimizer step for this chunk keeps its state (master, m, v): compute,
  // host or nvme. The step itself runs on compute if the state is there, else on host,
  // and the fp32 grad shard lives where the step runs.
  Tier optim_tier = Tier::kCompute;
  std::uint64_t optim_state_bytes = 0;  // this rank's master + optimizer state bytes
  std::uint64_t grad_shard_bytes = 0;   // this rank's grad accumulator bytes (fp32 or bf16)
  // The grad shard stays in compute memory until the step, which copies it to the host
  // (strata.gradient_shards_on_compute): its bytes count on compute, not where the step runs.
  bool grad_shard_on_compute = false;
  bool persistent = false;              // keep gathered regardless of the threshold
  // The shard is not stored: gathers cast this rank's fp32 master slice (stage 3, shard
  // and optimizer state both on host; Note [shard from master] in src/engine). Its shard
  // bytes are not held in shard_tier.
  bool shard_from_master = false;
  // Stages 0-2: every rank holds the whole chunk for good (only the optimizer state is
  // sharded). Never gathered or released by an access; after the step this rank's
  // updated slice is all-gathered into it (a Gather in the step ops when world > 1).
  bool replicated = false;
};

struct ScheduleAccess {
  std::vector<ChunkId> chunks;                // needed together while the module runs
  Phase phase = Phase::kForward;
  std::uint64_t reserved_compute_bytes = 0;   // non-model bytes (activations) at this access
  // The last access that begins before this one ends (Note [overlapping accesses] in
  // trace.h); at or below its own index: it ends before the next access begins.
  std::uint32_t open_through = 0;
};

// One validated config for the schedule (DESIGN.md §4). Sizes are bytes except where
// named _elems; a budget of 0 means unlimited.
struct ScheduleOptions {
  int world = 1;
  std::uint64_t prefetch_bucket_bytes = 0;  // bytes gathered ahead of use at any access; 0 = no prefetch
  std::uint64_t max_live_bytes = UINT64_MAX;
  std::uint64_t max_reuse_distance_elems = UINT64_MAX;
  std::uint64_t persistence_threshold_elems = 0;
  TierBytes budget_bytes{0, 0, 0};
  // Bytes held all step in each tier by state outside the chunks (buffers, activations
  // that do not vary), on top of what the chunks' shards and optimizer state hold.
  TierBytes fixed_bytes{0, 0, 0};

  Status validate() const;
  // From DeepSpeed's stage-3 knobs (elements, converted with param_bytes per element) and
  // strata's budgets. world >= 1, param_bytes in {2, 4}.
  static Result<ScheduleOptions> from_config(const Config& cfg, int world, std::uint32_t param_bytes);
};

struct ScheduleInput {
  std::vector<ScheduleChunk> chunks;
  std::vector<ScheduleAccess> accesses;
  ScheduleOptions options;
  // The accesses in the order they end (AccessTrace::close_order); empty: in index order.
  // Ordered by open_through, as they are when they come from a trace.
  std::vector<std::uint32_t> close_order;
  // Per chunk, the access from which its grad buffer is live, when that is after its
  // first backward access; empty, or an entry of UINT32_MAX: its first backward access.
  std::vector<std::uint32_t> grad_from;
};

enum class OpKind : std::uint8_t {
  kLoad,           // copy this rank's shard from_tier -> to_tier (nvme -> host staging)
  kGather,         // all-gather the chunk into compute from the shard at from_tier
  kRelease,        // free the gathered buffer (reuse rule, or the end of the step)
  kEvict,          // free the gathered buffer early for room (Belady); to_tier = shard home
  kReduceScatter,  // grads complete: reduce-scatter the grad buffer, shard to to_tier
  kStep,           // optimizer step of the chunk's shard on from_tier (compute or host)
  kStore,          // write bytes from_tier -> to_tier (updated params home, state to nvme)
};
std::string_view to_string(OpKind k);

struct Op {
  OpKind kind = OpKind::kGather;
  ChunkId chunk = 0;
  Tier from_tier = Tier::kCompute;
  Tier to_tier = Tier::kCompute;
  // Gather/Release/Evict: the gathered size; ReduceScatter: the full grad size;
  // Load/Store: the bytes copied; Step: this rank's optimizer state bytes.
  std::uint64_t bytes = 0;
  // Gather and its Load: the access that needs it (a prefetch when > the issuing access).
  std::uint32_t use_index = 0;
  // What a Load, Store or Step moves: parameters, or (step ops) the optimizer state.
  StateKind what = StateKind::kParams;
  bool operator==(const Op&) const = default;
};

struct AccessOps {
  std::vector<Op> pre;   // before the module runs: evictions, then loads and gathers
  std::vector<Op> post;  // after it ran: releases, then reduce-scatters
};

// Bytes moved per rank over one step, per link and direction (Note [cost model]).
struct LinkBytes {
  std::uint64_t nvme_to_host = 0;
  std::uint64_t host_to_nvme = 0;
  std::uint64_t host_to_compute = 0;
  std::uint64_t compute_to_host = 0;
  std::uint64_t net_gather = 0;          // bytes this rank receives in all-gathers
  std::uint64_t net_reduce_scatter = 0;  // bytes this rank sends in reduce-scatters
  std::uint64_t net_all_reduce = 0;      // bytes this rank sends in all-reduces (stages 0-1 gradients)
  std::uint64_t host_compute() const { return host_to_compute + compute_to_host; }
  std::uint64_t nvme_host() const { return nvme_to_host + host_to_nvme; }
  LinkBytes& operator+=(const LinkBytes& o);
  bool operator==(const LinkBytes&) const = default;
};

// Note [cost model]: what one op moves on each link, per rank, with s = bytes / world:
//   Load(from, to, b)          b on from->to (nvme->host staging of an nvme shard)
//   Gather(from = compute)     network (world-1)*s; no copy (the shard is in place)
//   Gather(from = host)        host->compute s (the shard into this rank's slice of the
//                              gathered buffer), then network (world-1)*s. A shard homed
//                              on nvme is Loaded to host first, so its Gather is from host.
//   Release, Evict             nothing (parameters do not change during fwd/bwd)
//   ReduceScatter(to)          network (world-1)*g sent, g = grad bytes / world; plus
//                              compute->host g when to = host
//   Step                       nothing by itself
//   Store(from, to, b)         b on each link of the path: compute->host, host->nvme,
//                              host->compute (compute->nvme counts on both legs)
LinkBytes link_bytes(const Op& op, int world);

struct Schedule {
  std::vector<AccessOps> accesses;  // one per input access, same index as the trace
  std::vector<Op> step;             // after the last access: the optimizer step, per chunk
  LinkBytes moved;                  // sum of link_bytes over every op
  TierBytes peak{0, 0, 0};          // peak bytes per tier, reserved bytes included
  std::vector<std::uint64_t> compute_bytes;   // per access, while the module runs
  std::vector<std::uint64_t> gathered_bytes;  // per access: gathered chunks only
  std::uint64_t n_gathers = 0;      // excluding persistent gathers at pre(0)
  std::uint64_t n_prefetched = 0;   // gathers issued before the access that uses them
  std::uint64_t gathered_total_bytes = 0;  // sum of bytes over all gathers
};

Result<Schedule> make_schedule(const ScheduleInput& in);

// Note [residency rules]: the rules every component applies to a chunk, defined once.
// The step of a chunk runs where its optimizer state is when that is compute, else on
// host (the CPU optimizer); the fp32 gradient shard lives there too.
Tier step_tier(Tier optim_tier);
inline Tier step_tier(const ScheduleChunk& c) { return step_tier(c.optim_tier); }
// Where the gradient shard lives between backward and the step.
inline Tier grad_shard_tier(const ScheduleChunk& c) { return c.grad_shard_on_compute ? Tier::kCompute : step_tier(c); }
// World 1 with the shard on compute: the shard is the gathered chunk; never moved.
bool chunk_aliased(const ScheduleChunk& c, int world);
// Gathered at pre(0), never released within a step: flagged persistent (a chunk of
// small parameters) or smaller than the persistence threshold; never aliased or
// replicated.
bool chunk_persistent(const ScheduleChunk& c, const ScheduleOptions& o);

// Note [step ops]: the optimizer step, per chunk with a gradient, in chunk order:
//   load     nvme -> host      the chunk's optimizer state, when it lives on nvme
//   step     on step_tier      the fused kernel
//   store    host -> nvme      the state back, when it lives on nvme
//   store    step -> shard     the updated parameter shard home, when it lives elsewhere
//   gather   compute           replicated chunks, world > 1: every rank's updated slice
// `world` is the chunks' shard count (1 for stage 0). make_schedule's `step` is this.
std::vector<Op> step_ops(std::span<const ScheduleChunk> chunks, int world);

// The cost model's copy rule: `bytes` moved from -> to counts on every link of the
// path (compute <-> nvme goes through host).
void add_copy(LinkBytes& l, Tier from, Tier to, std::uint64_t bytes);

// The chunk access sequence of a trace: module i's chunks through module_chunks (a
// module absent from the map uses no chunk), and where each access ends (open_through,
// when given). Indexes match the trace's.
std::vector<ScheduleAccess> chunk_accesses(std::span<const ModuleAccess> trace,
                                           const std::map<int, std::vector<ChunkId>>& module_chunks,
                                           std::span<const std::uint32_t> open_through = {});

// Chunk sizes from a layout: bytes = size_elems * elem_bytes; grads in the same dtype
// for chunks with a trainable parameter; persistent for ChunkKind::kPersistent.
// shard_tier per chunk (or all compute when empty); optimizer state 12 bytes per element
// (fp32 master, m, v) and grad shard 4 bytes per element, both divided by world, at
// optim_tier.
std::vector<ScheduleChunk> schedule_chunks(const ChunkLayout& layout, std::span<const ParamInfo> params,
                                           std::uint32_t elem_bytes, int world,
                                           std::span<const Tier> shard_tiers, Tier optim_tier);

// A multi-line, human-readable listing ("pre  gather c3 from host (use 5)").
std::string describe(const Schedule& s);

}  // namespace strata::plan
