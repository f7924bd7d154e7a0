// Zero3Engine: gathering and releasing chunks around each access, by the schedule or
// on demand.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "strata/base/log.h"
#include "strata/tiers/memory_probe.h"
#include "zero3_impl.h"

namespace strata::engine {

std::string Zero3Engine::Impl::chunk_name(std::uint32_t c) const { return fmt::format("chunk {}", c); }

void Zero3Engine::Impl::account(Tier from, Tier to, std::uint64_t bytes) {
  if (from == to) return;
  plan::LinkBytes& l = cur.moved;
  if (from == Tier::kHost && to == Tier::kCompute) l.host_to_compute += bytes;
  else if (from == Tier::kCompute && to == Tier::kHost) l.compute_to_host += bytes;
  else if (from == Tier::kNvme && to == Tier::kHost) l.nvme_to_host += bytes;
  else if (from == Tier::kHost && to == Tier::kNvme) l.host_to_nvme += bytes;
  else if (from == Tier::kNvme) l.nvme_to_host += bytes, l.host_to_compute += bytes;
  else l.compute_to_host += bytes, l.host_to_nvme += bytes;
}

void Zero3Engine::Impl::begin_step_if_needed() {
  if (in_step) return;
  in_step = true;
  trace.begin_step();
  scheduled_step = opt.prefetch && schedule.has_value() && trace.complete();
  if (scheduled_step) cur.planned += schedule->moved;
  cur.scheduled = scheduled_step;
  step_t0 = Clock::now();
  trace_out.begin_step();
  if (measuring_activations()) {
    access_live_bytes.clear();
    baseline_live_bytes = tiers::MemoryProbe::live_bytes() - accounted_bytes();
  }
}

bool Zero3Engine::Impl::measuring_activations() const {
  return opt.placement == Placement::kAuto && tiers::MemoryProbe::installed() && !trace.complete();
}

std::uint64_t Zero3Engine::Impl::accounted_bytes() const {
  return tiers.used(Tier::kCompute) + tiers.used(Tier::kHost);
}

std::optional<std::size_t> Zero3Engine::Impl::on_access(int u, plan::Phase phase) {
  std::optional<std::size_t> at;
  // Inference (a forward without an autograd graph) fetches on demand and leaves the
  // training trace alone. Backward runs with grad mode off, but is always training.
  const bool training = phase == plan::Phase::kBackward || at::GradMode::is_enabled();
  if (training) {
    begin_step_if_needed();
    at = trace.on_access({u, phase});
    if (scheduled_step && !at) {
      // Another path through the model: the trace warned once; finish the step on
      // demand. Prefetched chunks stay gathered until on-demand eviction needs room.
      scheduled_step = false;
      schedule.reset();
    }
    if (scheduled_step) run_ops(schedule->accesses[*at].pre, *at);
  }
  poll_reduce_scatters();
  ensure_gathered(units[u].chunks);
  for (std::uint32_t c : units[u].chunks) chunks[c].sm.begin_use();
  if (training && measuring_activations()) {
    const std::uint64_t live = tiers::MemoryProbe::live_bytes() - accounted_bytes();
    access_live_bytes.push_back(live > baseline_live_bytes ? live - baseline_live_bytes : 0);
  }
  unit_t0 = Clock::now();
  return at;
}

void Zero3Engine::Impl::finish_access(int u, plan::Phase phase, std::optional<std::size_t> at) {
  const ChunkState after = phase == plan::Phase::kForward ? ChunkState::kHoldAfterFwd : ChunkState::kHoldAfterBwd;
  for (std::uint32_t c : units[u].chunks) chunks[c].sm.end_use(after);
  trace_out.add(StepTrace::kCompute, fmt::format("{} {}", units[u].spec.name, plan::to_string(phase)), unit_t0,
                Clock::now());
  if (scheduled_step && at) {
    run_ops(schedule->accesses[*at].post, *at);
    return;
  }
  // On demand: release what this unit used as soon as nobody uses it.
  for (std::uint32_t c : units[u].chunks) release(c);
}

void Zero3Engine::Impl::run_ops(const std::vector<plan::Op>& ops, std::size_t at) {
  for (const plan::Op& op : ops) {
    switch (op.kind) {
      case plan::OpKind::kEvict:
      case plan::OpKind::kRelease: release(op.chunk); break;
      case plan::OpKind::kGather: start_gather(op.chunk, op.use_index > at); break;
      // Loads happen inside the gather of an nvme shard; reduce-scatters start when a
      // chunk's gradients are complete; steps and stores belong to optimizer_step().
      case plan::OpKind::kLoad:
      case plan::OpKind::kReduceScatter:
      case plan::OpKind::kStep:
      case plan::OpKind::kStore: break;
    }
  }
}

tiers::Reservation Zero3Engine::Impl::reserve_compute(std::uint64_t bytes, const std::string& holder,
                                                       const std::vector<std::uint32_t>& keep) {
  auto r = tiers.reserve(Tier::kCompute, bytes, holder);
  if (!r) {
    // Gradient buffers whose reduce-scatter finished free room first, then gathered
    // chunks nobody uses, oldest first. The schedule never needs this; on-demand steps do.
    (void)drain_reduce_scatters();
    r = tiers.reserve(Tier::kCompute, bytes, holder);
  }
  if (!r) {
    make_room(bytes, keep);
    r = tiers.reserve(Tier::kCompute, bytes, holder);
  }
  if (!r) throw_error(r.error());
  return std::move(*r);
}

void Zero3Engine::Impl::make_room(std::uint64_t bytes, const std::vector<std::uint32_t>& keep) {
  const std::uint64_t budget = tiers.budget(Tier::kCompute);
  while (budget != 0 && tiers.used(Tier::kCompute) + bytes > budget) {
    std::optional<std::uint32_t> victim;
    for (std::uint32_t c = 0; c < chunks.size(); ++c) {
      const ChunkRt& k = chunks[c];
      if (!k.sm.gathered() || k.persistent || k.aliased || k.sm.users() > 0) continue;
      if (std::find(keep.begin(), keep.end(), c) != keep.end()) continue;
      if (!victim || k.last_used < chunks[*victim].last_used) victim = c;
    }
    if (!victim) return;
    release(*victim);
  }
}

void Zero3Engine::Impl::start_gather(std::uint32_t c, bool prefetch) {
  ChunkRt& k = chunks[c];
  if (k.sm.gathered()) return;
  if (k.aliased) {  // world 1, shard on compute: the full chunk is the shard, always there
    k.sm.to(ChunkState::kHold);
    return;
  }
  const at::Tensor& full = store->full(c);
  const std::uint64_t bytes = static_cast<std::uint64_t>(full.numel()) * full.element_size();
  k.gathered_res = reserve_compute(bytes, "gathered " + chunk_name(c), keep_for_gather(c));
  const auto t0 = Clock::now();
  ChunkStore::alloc_storage(full);
  at::Tensor slice = store->shard(full, c);
  const std::uint64_t shard_bytes = bytes / opt.chunks.world;
  // Note [shard into slice]: this rank's shard is copied into its slice of the gathered
  // buffer (a real host->compute copy when the shard lives on host), then the
  // all-gather fills the other slices in place.
  if (k.shard_tier == Tier::kNvme) {
    if (auto st = load_shard(c, slice); !st) throw_error(st.error());
    account(Tier::kNvme, Tier::kHost, shard_bytes);
    account(Tier::kHost, Tier::kCompute, shard_bytes);
  } else {
    slice.copy_(k.shard);
    account(k.shard_tier, Tier::kCompute, shard_bytes);
  }
  if (k.shard_tier != Tier::kCompute) trace_out.add(StepTrace::kCopy, "shard->compute " + chunk_name(c), t0, Clock::now());
  if (opt.chunks.world > 1) {
    k.gather = comm->all_gather(slice, full);
    k.gather_in_flight = true;
    k.gather_issued = Clock::now();
    cur.moved.net_gather += shard_bytes * (opt.chunks.world - 1);
  }
  k.prefetched = prefetch;
  k.awaiting_use = true;
  k.sm.to(ChunkState::kHold);
  if (!k.persistent) ++cur.gathers;
  gathered_bytes += bytes;
  cur.peak_gathered_bytes = std::max(cur.peak_gathered_bytes, gathered_bytes);
}

std::vector<std::uint32_t> Zero3Engine::Impl::keep_for_gather(std::uint32_t c) const {
  // While gathering for an access, keep everything that access needs.
  std::vector<std::uint32_t> keep{c};
  for (const UnitRt& u : units)
    for (std::uint32_t x : u.chunks)
      if (chunks[x].sm.users() > 0) keep.push_back(x);
  return keep;
}

void Zero3Engine::Impl::wait_gather(std::uint32_t c) {
  ChunkRt& k = chunks[c];
  k.last_used = ++use_clock;
  // A gather issued ahead of use is a hit if its data is there when the access needs it.
  const bool ready = !k.gather_in_flight || k.gather.done();
  if (k.awaiting_use) {
    k.awaiting_use = false;
    if (k.prefetched && ready && !k.persistent) ++cur.prefetch_hits;
  }
  if (!k.gather_in_flight) return;
  const auto t0 = Clock::now();
  auto st = k.gather.wait();
  k.gather_in_flight = false;
  const auto t1 = Clock::now();
  if (!st) throw_error(st.error());
  cur.gather_wait_s += std::chrono::duration<double>(t1 - t0).count();
  trace_out.add(StepTrace::kGather, "gather " + chunk_name(c), k.gather_issued, t1);
}

void Zero3Engine::Impl::ensure_gathered(const std::vector<std::uint32_t>& cs) {
  for (std::uint32_t c : cs) start_gather(c, false);  // issue every missing gather first,
  for (std::uint32_t c : cs) wait_gather(c);          // then wait: they overlap
}

void Zero3Engine::Impl::release(std::uint32_t c) {
  ChunkRt& k = chunks[c];
  if (!k.sm.gathered() || k.persistent || k.aliased || k.sm.users() > 0) return;
  if (k.gather_in_flight) {  // never free storage under a running collective
    if (auto st = k.gather.wait(); !st) throw_error(st.error());
    k.gather_in_flight = false;
  }
  const at::Tensor& full = store->full(c);
  ChunkStore::free_storage(full);
  gathered_bytes -= k.gathered_res.bytes();
  k.gathered_res.release();
  k.sm.to(ChunkState::kFree);
}

}  // namespace strata::engine
