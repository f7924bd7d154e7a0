// Zero3Engine: placement of each chunk's parameter shard and optimizer state in a tier,
// with the reservations that account for them, and the schedule's view of the chunks.
#include <cmath>

#include <ATen/ATen.h>

#include "strata/base/log.h"
#include "strata/base/units.h"
#include "zero3_impl.h"

namespace strata::engine {
namespace {

Tier tier_of(OffloadDevice d) {
  return d == OffloadDevice::kNvme ? Tier::kNvme : d == OffloadDevice::kCpu ? Tier::kHost : Tier::kCompute;
}

io::SwapKey param_key(std::uint32_t c) { return {io::SwapKind::kParams, 0, c}; }

std::span<std::byte> bytes_of(const at::Tensor& t) {
  return {static_cast<std::byte*>(t.data_ptr()), static_cast<std::size_t>(t.numel()) * t.element_size()};
}

}  // namespace

Status Zero3Engine::Impl::load_shard(std::uint32_t c, const at::Tensor& dst) {
  // dst is the shard's slice of the gathered buffer: read straight into it.
  return swap->get(param_key(c), bytes_of(dst));
}

Status Zero3Engine::Impl::store_shard(std::uint32_t c, const at::Tensor& src) {
  return swap->put(param_key(c), bytes_of(src));
}

// The tiers of chunk c from the static policy: offload devices first, else the
// configured fractions of the trainable chunks, counted in chunk order.
void Zero3Engine::Impl::static_tiers(std::uint32_t c, std::size_t trainable_index, std::size_t n_trainable) {
  ChunkRt& k = chunks[c];
  auto frac_hit = [&](double frac) {
    return trainable_index < static_cast<std::size_t>(std::ceil(frac * static_cast<double>(n_trainable)));
  };
  k.shard_tier = opt.param_device != OffloadDevice::kNone ? tier_of(opt.param_device)
                 : frac_hit(opt.offload_param_frac)     ? Tier::kHost
                                                         : Tier::kCompute;
  k.optim_tier = opt.optim_device != OffloadDevice::kNone ? tier_of(opt.optim_device)
                 : frac_hit(opt.offload_optim_frac)     ? Tier::kHost
                                                         : Tier::kCompute;
  if (opt.placement == Placement::kAuto) {
    // auto starts with every shard on compute; fit_auto_placement() moves some to host.
    // The optimizer runs on host when compute is a separate, budgeted pool.
    k.shard_tier = Tier::kCompute;
    k.optim_tier = opt.schedule.budget_bytes[plan::tier_index(Tier::kCompute)] != 0 ? Tier::kHost : Tier::kCompute;
  }
}

Status Zero3Engine::Impl::place(const Zero3Options& o) {
  std::size_t n_trainable = 0;
  for (std::uint32_t c = 0; c < chunks.size(); ++c) {
    for (const plan::ParamSlot& s : store->chunk(c).params)
      if (store->params()[s.param].requires_grad()) chunks[c].trainable = true;
    n_trainable += chunks[c].trainable;
  }
  const std::uint64_t threshold = o.chunks.persistence_threshold_elems;
  std::size_t trainable_index = 0;
  bool any_nvme = false;
  for (std::uint32_t c = 0; c < chunks.size(); ++c) {
    ChunkRt& k = chunks[c];
    slots.push_back(store->shard_slots(c, o.chunks.rank));
    // The planner's rule, so both agree on what never leaves compute.
    k.persistent = store->chunk(c).kind == plan::ChunkKind::kPersistent || store->chunk(c).size_elems < threshold;
    static_tiers(c, k.trainable ? trainable_index++ : 0, n_trainable);
    if (!k.trainable) k.optim_tier = Tier::kHost;  // nothing to step; its state is empty
    any_nvme |= k.shard_tier == Tier::kNvme || (k.trainable && k.optim_tier == Tier::kNvme);
  }
  if (any_nvme) {
    STRATA_ASSIGN_OR_RETURN(swap, io::SwapStore::open(o.swap));
    std::vector<io::SwapReservation> records;
    for (std::uint32_t c = 0; c < chunks.size(); ++c) {
      const std::uint64_t n = static_cast<std::uint64_t>(store->shard_elems(c));
      if (chunks[c].shard_tier == Tier::kNvme) records.push_back({param_key(c), n * c10::elementSize(o.compute_dtype)});
      if (chunks[c].trainable && chunks[c].optim_tier == Tier::kNvme) {
        for (std::uint32_t t = 0; t <= kernel.state_names().size(); ++t) records.push_back({{io::SwapKind::kOptimizer, t, c}, n * 4});
      }
    }
    // All of it up front: a full disk fails here, before training starts.
    STRATA_RETURN_IF_ERROR(swap->reserve(records));
  }
  // auto decides its tiers on paper first (nothing is reserved yet), then materializes.
  if (opt.placement == Placement::kAuto) STRATA_RETURN_IF_ERROR(fit_auto_placement());
  for (std::uint32_t c = 0; c < chunks.size(); ++c) STRATA_RETURN_IF_ERROR(materialize(c));
  refresh_schedule_chunks();
  return check_fits_provisional();
}

// Moves chunk c's shard and state into their tiers, reserving the bytes.
Status Zero3Engine::Impl::materialize(std::uint32_t c) {
  ChunkRt& k = chunks[c];
  const std::int64_t n = store->shard_elems(c);
  const std::uint64_t shard_bytes = static_cast<std::uint64_t>(n) * c10::elementSize(opt.compute_dtype);
  const bool world_one = opt.chunks.world == 1;
  k.aliased = world_one && k.shard_tier == Tier::kCompute;
  if (k.shard_tier == Tier::kNvme) {
    STRATA_RETURN_IF_ERROR(store_shard(c, k.shard));
    k.shard = at::Tensor();
  } else if (k.aliased) {
    // World 1 on compute: the full chunk is the shard; it stays gathered for good.
    ChunkStore::alloc_storage(store->full(c));
    store->full(c).copy_(k.shard);
    k.shard = store->full(c);
    k.sm.to(ChunkState::kHold);
  }
  STRATA_ASSIGN_OR_RETURN(k.shard_res, tiers.reserve(k.shard_tier, shard_bytes, "param shard " + chunk_name(c)));
  if (!k.trainable) {
    k.optim = ShardState{};
    return ok();
  }
  const Tier st = step_tier(c);
  k.grad_shard = at::zeros({n}, at::kFloat);
  const std::uint64_t state_bytes = k.optim.bytes();
  if (k.optim_tier == Tier::kNvme) {
    std::vector<at::Tensor*> ts{&k.optim.master};
    for (auto& t : k.optim.states) ts.push_back(&t);
    for (std::uint32_t t = 0; t < ts.size(); ++t) {
      STRATA_RETURN_IF_ERROR(swap->put({io::SwapKind::kOptimizer, t, c}, bytes_of(*ts[t])));
    }
    k.optim = ShardState{};  // the host copy is dropped: the swap store holds it now
  }
  STRATA_ASSIGN_OR_RETURN(k.optim_res, tiers.reserve(k.optim_tier, state_bytes, "optimizer state " + chunk_name(c)));
  STRATA_ASSIGN_OR_RETURN(k.grad_shard_res, tiers.reserve(st, static_cast<std::uint64_t>(n) * 4, "grad shard " + chunk_name(c)));
  return ok();
}

void Zero3Engine::Impl::refresh_schedule_chunks() {
  sched_chunks.clear();
  const std::uint64_t elem = c10::elementSize(opt.compute_dtype);
  for (std::uint32_t c = 0; c < chunks.size(); ++c) {
    const ChunkRt& k = chunks[c];
    const std::uint64_t numel = store->chunk(c).size_elems;
    const std::uint64_t n = numel / opt.chunks.world;
    sched_chunks.push_back(plan::ScheduleChunk{
        .bytes = numel * elem,
        .numel = numel,
        .grad_bytes = k.trainable ? numel * elem : 0,
        .shard_tier = k.shard_tier,
        .optim_tier = k.optim_tier,
        .optim_state_bytes = k.trainable ? n * 4 * (1 + kernel.state_names().size()) : 0,
        .grad_shard_bytes = k.trainable ? n * 4 : 0,
        .persistent = k.persistent,
    });
  }
}

std::vector<plan::ModuleAccess> Zero3Engine::Impl::provisional_trace() const {
  // Units in registration order forward, then in reverse backward: what most models
  // do, and enough to check the budget before any step runs.
  std::vector<plan::ModuleAccess> t;
  for (const UnitRt& u : units) t.push_back({u.id, plan::Phase::kForward});
  for (auto it = units.rbegin(); it != units.rend(); ++it) t.push_back({it->id, plan::Phase::kBackward});
  return t;
}

Status Zero3Engine::Impl::check_fits_provisional() {
  if (opt.placement == Placement::kAuto) return fit_auto_placement();
  auto s = plan_schedule(provisional_trace());
  if (!s) return make_error(std::move(s).error().with_note("the configured placement does not fit"));
  return ok();
}

Status Zero3Engine::Impl::move_shard_to_host(std::uint32_t c) {
  ChunkRt& k = chunks[c];
  if (!k.shard_res) {  // not materialized yet: only the decision changes
    k.shard_tier = Tier::kHost;
    return ok();
  }
  const std::uint64_t bytes = k.shard_res.bytes();
  STRATA_ASSIGN_OR_RETURN(tiers::Reservation r, tiers.reserve(Tier::kHost, bytes, "param shard " + chunk_name(c)));
  if (k.aliased) {  // it was the full chunk: take a real host copy and free the chunk
    k.shard = k.shard.clone();
    k.sm.to(ChunkState::kFree);
    ChunkStore::free_storage(store->full(c));
    k.aliased = false;
  } else {
    k.shard = k.shard.clone();  // a real copy into the host pool
  }
  k.shard_res = std::move(r);
  k.shard_tier = Tier::kHost;
  return ok();
}

Status Zero3Engine::Impl::fit_auto_placement() {
  // Keep as many shards on compute as the schedule allows; move the largest ones to
  // host until the step fits (Note [auto placement]).
  const auto accesses = trace.complete() ? std::vector<plan::ModuleAccess>(trace.accesses().begin(), trace.accesses().end())
                                         : provisional_trace();
  for (;;) {
    refresh_schedule_chunks();
    auto s = plan_schedule(accesses);
    if (s) return ok();
    std::optional<std::uint32_t> victim;
    for (std::uint32_t c = 0; c < chunks.size(); ++c) {
      if (chunks[c].shard_tier != Tier::kCompute || chunks[c].persistent) continue;
      if (!victim || store->chunk(c).size_elems > store->chunk(*victim).size_elems) victim = c;
    }
    if (!victim) return make_error(std::move(s).error().with_note("auto placement: even with every shard on host"));
    STRATA_RETURN_IF_ERROR(move_shard_to_host(*victim));
    log::debug("auto placement: param shard of {} moved to host", chunk_name(*victim));
  }
}

}  // namespace strata::engine
