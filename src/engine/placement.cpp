// Engine: where each chunk's parameter shard and optimizer state live.
//
// Note [auto placement]: `auto` starts with every parameter shard on compute (stage 3)
// and its optimizer state on host when compute is a budgeted pool of its own (else, and
// always at stage 0, on compute). Then, while the planner says the schedule does not fit the compute budget,
// the largest shard still on compute moves to host. Before any step this runs on the
// provisional trace (units forward, then backward in reverse); once the first step has
// recorded the real trace, again on it, with the non-model bytes measured at each
// access (tiers::MemoryProbe: activations, temporaries) as reserved compute memory.
// Shards only ever move towards host, so a placement that fit stays valid.
//
// Note [shard from master]: at stage 3, when a trainable chunk's parameter shard and its
// optimizer state both live on host, the shard is not stored at all: it is exactly the
// fp32 master slice cast to the compute dtype (the fused step writes it that way, with
// round-to-nearest-even, and frozen parameters' masters keep their initial values), so a
// gather casts the master into its slice instead of copying a shard. That saves the
// compute-dtype copy, 2 bytes per parameter in bf16 (4 in fp32, where the shard was the
// master twice): host offload then holds 16 bytes per parameter, as plain PyTorch's
// fp32 parameter, gradient, m and v. Static placement only (auto moves shards after
// setup), and never with a wrapped torch::optim optimizer (it writes shards itself).
#include <cmath>

#include "engine_impl.h"
#include "strata/base/log.h"

namespace strata::engine {
Status Engine::Impl::place() {
  ChunkRuntime& chunks = *core.chunks;
  const EngineOptions& o = core.opt;
  std::size_t n_trainable = 0;
  for (std::uint32_t c = 0; c < chunks.size(); ++c) n_trainable += chunks[c].trainable;
  // static: the offload devices, else the configured fractions of the trainable chunks,
  // counted in chunk order.
  std::size_t trainable_index = 0;
  auto frac_hit = [&](double frac) {
    return trainable_index < static_cast<std::size_t>(std::ceil(frac * static_cast<double>(n_trainable)));
  };
  const bool compute_budgeted = o.schedule.budget_bytes[plan::tier_index(Tier::kCompute)] != 0;
  bool any_nvme = false;
  std::int64_t in_cpu = 0;  // offload_param.max_in_cpu: shard elements kept on host so far
  std::int64_t optim_in_cpu = 0;  // the same for strata.optimizer_max_in_cpu
  for (std::uint32_t c = 0; c < chunks.size(); ++c) {
    ChunkRt& k = chunks[c];
    if (o.placement == Placement::kAuto) {
      k.shard_tier = Tier::kCompute;
      k.optim_tier = compute_budgeted && core.stage() > 0 ? Tier::kHost : Tier::kCompute;
    } else {
      k.shard_tier = o.param_device != OffloadDevice::kNone ? plan::offload_tier(o.param_device)
                     : frac_hit(o.offload_param_frac)       ? Tier::kHost
                                                            : Tier::kCompute;
      k.optim_tier = o.optim_device != OffloadDevice::kNone ? plan::offload_tier(o.optim_device)
                     : frac_hit(o.offload_optim_frac)       ? Tier::kHost
                                                            : Tier::kCompute;
    }
    if (core.stage() < 3) k.shard_tier = Tier::kCompute;  // replicated: whole parameters on compute
    if (k.shard_tier == Tier::kNvme && in_cpu + chunks.store().shard_elems(c) <= o.param_staging.max_in_cpu) {
      in_cpu += chunks.store().shard_elems(c);
      k.shard_tier = Tier::kHost;
    }
    if (!k.trainable) k.optim_tier = Tier::kHost;         // nothing to step; no state
    // strata.optimizer_max_in_cpu: the first chunks' state stays in host memory.
    if (k.optim_tier == Tier::kNvme && optim_in_cpu + chunks.store().shard_elems(c) <= o.optim_max_in_cpu) {
      optim_in_cpu += chunks.store().shard_elems(c);
      k.optim_tier = Tier::kHost;
    }
    k.grads_on_compute =
        o.gradient_shards_on_compute && core.stage() >= 2 && k.trainable && k.optim_tier != Tier::kCompute;
    k.grads_on_nvme = !k.grads_on_compute && o.nvme_gradients && core.stage() >= 2 && k.trainable &&
                      k.optim_tier == Tier::kNvme;
    trainable_index += k.trainable;
    chunks.decide_residency(c);
    // Note [shard from master].
    k.shard_from_master = o.placement == Placement::kStatic && !o.wrap && k.trainable &&
                          k.shard_tier == Tier::kHost && k.optim_tier == Tier::kHost &&
                          (k.residency == Residency::kSharded || k.residency == Residency::kPersistent);
    any_nvme |= k.shard_tier == Tier::kNvme || (k.trainable && k.optim_tier == Tier::kNvme);
  }
  if (any_nvme) {
    STRATA_ASSIGN_OR_RETURN(core.swap, io::SwapStore::open(o.swap));
    // Its pool (record headers, unaligned spans) is registered with io_uring, so resident.
    STRATA_ASSIGN_OR_RETURN(core.swap_pool_res, core.tiers.reserve(Tier::kHost, core.swap->pool().budget(),
                                                                   StateKind::kBuffers, "swap store pool"));
    std::vector<io::SwapReservation> records;
    for (std::uint32_t c = 0; c < chunks.size(); ++c) {
      if (chunks[c].shard_tier == Tier::kNvme) records.push_back({param_key(c), chunks.shard_bytes(c)});
      const std::vector<ElemRange> groups = optim->groups(c);
      for (std::uint32_t g = 0; chunks[c].grads_on_nvme && g < groups.size(); ++g)
        records.push_back({grad_key(c, g), static_cast<std::uint64_t>(groups[g].size()) *
                                               c10::elementSize(o.grad_shard_dtype)});
      optim->add_records(c, records);
    }
    // All of it up front: a full disk fails here, before training starts.
    STRATA_RETURN_IF_ERROR(core.swap->reserve(records));
    STRATA_RETURN_IF_ERROR(optim->setup_staging());
    STRATA_RETURN_IF_ERROR(gatherer->setup_staging());
  }
  // auto decides on paper too: nothing is materialized yet (Note [streaming setup]).
  if (o.placement == Placement::kAuto && access) STRATA_RETURN_IF_ERROR(fit_auto());
  return ok();
}

// Note [auto placement].
Status Engine::Impl::fit_auto() {
  ChunkRuntime& chunks = *core.chunks;
  const plan::AccessTrace& trace = access->trace();
  const std::vector<plan::ModuleAccess> provisional = access->provisional_trace();
  for (;;) {
    auto s = trace.complete() ? access->plan(trace.accesses(), trace.open_through(), trace.close_order())
                              : access->plan(provisional);
    if (s) return ok();
    std::optional<std::uint32_t> victim;
    for (std::uint32_t c = 0; c < chunks.size(); ++c) {
      if (chunks[c].shard_tier != Tier::kCompute || chunks[c].residency == Residency::kPersistent) continue;
      if (!victim || chunks.store().chunk_elems(c) > chunks.store().chunk_elems(*victim)) victim = c;
    }
    if (!victim) return make_error(std::move(s).error().with_note("auto placement: even with every shard on host"));
    STRATA_RETURN_IF_ERROR(chunks.move_shard_to_host(*victim));
    log::debug("auto placement: param shard of {} moved to host", chunks.name(*victim));
  }
}

Status Engine::Impl::check_fits() {
  if (!access) return ok();  // stages 0-2: the reservations made at setup are the check
  if (core.opt.placement == Placement::kAuto) return fit_auto();
  auto s = access->plan(access->provisional_trace());
  if (!s) return make_error(std::move(s).error().with_note("the configured placement does not fit"));
  return ok();
}

}  // namespace strata::engine
