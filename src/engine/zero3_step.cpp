// Zero3Engine: the optimizer step over this rank's shards, and the trace's end of step.
#include <ATen/ATen.h>

#include "strata/base/log.h"
#include "strata/base/units.h"
#include "zero3_impl.h"

namespace strata::engine {

Result<kernels::GradStats> Zero3Engine::Impl::global_stats(double inv_scale) {
  STRATA_RETURN_IF_ERROR(drain_reduce_scatters());
  kernels::GradStats local;
  for (const ChunkRt& k : chunks) {
    if (!k.trainable) continue;
    STRATA_ASSIGN_OR_RETURN(kernels::GradStats s, kernels::grad_prologue(k.grad_shard.data_ptr(), kernels::DType::kF32,
                                                                        k.grad_shard.numel(), inv_scale, pool.get()));
    local.merge(s);
  }
  return all_reduce_stats(local, *comm);
}

namespace {

io::SwapKey optim_key(std::uint32_t c, std::uint32_t tensor) { return {io::SwapKind::kOptimizer, tensor, c}; }

std::span<std::byte> bytes_of(const at::Tensor& t) {
  return {static_cast<std::byte*>(t.data_ptr()), static_cast<std::size_t>(t.numel()) * t.element_size()};
}

}  // namespace

// Note [nvme optimizer state]: master and states of an nvme chunk live in the swap store
// between steps. The step reads chunk c+1's records while it steps chunk c, and writes
// chunk c's back while it moves on; at most two chunks of state are in host memory.
struct Zero3Engine::Impl::StateSwap {
  std::uint32_t chunk = 0;
  ShardState state;
  std::vector<io::SwapHandle> io;
  tiers::Reservation staging;  // declared after io: released once the I/O has finished
};

Result<std::unique_ptr<Zero3Engine::Impl::StateSwap>> Zero3Engine::Impl::swap_in_state(std::uint32_t c) {
  auto s = std::make_unique<StateSwap>();
  s->chunk = c;
  s->state = ShardState::make(store->shard_elems(c), kernel);
  // The host copy is model state too: it is accounted while it exists.
  STRATA_ASSIGN_OR_RETURN(s->staging, tiers.reserve(Tier::kHost, s->state.bytes(), "optimizer staging " + chunk_name(c)));
  std::vector<at::Tensor*> ts{&s->state.master};
  for (auto& t : s->state.states) ts.push_back(&t);
  for (std::uint32_t i = 0; i < ts.size(); ++i) s->io.push_back(swap->get_async(optim_key(c, i), bytes_of(*ts[i])));
  return s;
}

bool Zero3Engine::Impl::steps_every_param(std::uint32_t c) const {
  for (const auto& slot : slots[c])
    if (!param_steps.ever_had_grad[slot.param]) return false;
  return true;
}

Status Zero3Engine::Impl::optimizer_step(double grad_scale) {
  STRATA_RETURN_IF_ERROR(param_steps.sync(local_had_grad, *comm));
  STRATA_ASSIGN_OR_RETURN(kernels::DType pdt, kernel_dtype(opt.compute_dtype));
  std::vector<std::uint32_t> order;
  for (std::uint32_t c = 0; c < chunks.size(); ++c)
    if (chunks[c].trainable) order.push_back(c);
  std::unique_ptr<StateSwap> next;
  auto prefetch_state = [&](std::size_t i) -> Status {
    next.reset();
    if (i < order.size() && chunks[order[i]].optim_tier == Tier::kNvme) {
      STRATA_ASSIGN_OR_RETURN(next, swap_in_state(order[i]));
    }
    return ok();
  };
  STRATA_RETURN_IF_ERROR(prefetch_state(0));
  std::vector<std::unique_ptr<StateSwap>> writing;
  for (std::size_t i = 0; i < order.size(); ++i) {
    const std::uint32_t c = order[i];
    ChunkRt& k = chunks[c];
    const auto t0 = Clock::now();
    std::unique_ptr<StateSwap> swapped = std::move(next);
    STRATA_RETURN_IF_ERROR(prefetch_state(i + 1));
    ShardState* state = &k.optim;
    if (swapped) {
      for (auto& h : swapped->io) STRATA_RETURN_IF_ERROR(h.wait());
      swapped->io.clear();
      account(Tier::kNvme, Tier::kHost, swapped->state.bytes());
      state = &swapped->state;
    }
    // The kernel writes the new compute-dtype shard straight into the shard when it
    // lives where the step runs, else into a staging shard that is then stored home.
    // Note [step writes only what it computed]: the kernel skips frozen parameters and
    // parameters that never had a gradient, so the staging buffer holds new values only
    // in the runs it stepped. Only those runs go home; a record on nvme is written whole,
    // so when some parameter of the shard was not stepped the staging buffer starts as
    // the record's current contents.
    const Tier st = step_tier(c);
    const bool direct = k.shard_tier == st;
    const bool nvme_home = k.shard_tier == Tier::kNvme;
    at::Tensor out = direct ? k.shard : at::zeros({store->shard_elems(c)}, store->full(c).options());
    std::vector<ShardRun> stepped;
    if (nvme_home && !steps_every_param(c)) {
      STRATA_RETURN_IF_ERROR(load_shard(c, out));
      account(Tier::kNvme, Tier::kHost, static_cast<std::uint64_t>(out.numel()) * out.element_size());
    }
    STRATA_RETURN_IF_ERROR(step_shard(kernel, *state, slots[c], param_steps, k.grad_shard.data_ptr(),
                                      kernels::DType::kF32, out.data_ptr(), pdt, grad_scale, pool.get(), &stepped));
    if (!direct) {
      std::uint64_t bytes = 0;
      if (nvme_home) {
        STRATA_RETURN_IF_ERROR(store_shard(c, out));
        bytes = static_cast<std::uint64_t>(out.numel()) * out.element_size();
      } else {
        for (const ShardRun& run : stepped) {
          k.shard.narrow(0, run.begin, run.end - run.begin).copy_(out.narrow(0, run.begin, run.end - run.begin));
          bytes += static_cast<std::uint64_t>(run.end - run.begin) * out.element_size();
        }
      }
      account(st, k.shard_tier, bytes);
    }
    if (swapped) {
      std::vector<at::Tensor*> ts{&swapped->state.master};
      for (auto& t : swapped->state.states) ts.push_back(&t);
      for (std::uint32_t j = 0; j < ts.size(); ++j) swapped->io.push_back(swap->put_async(optim_key(c, j), bytes_of(*ts[j])));
      account(Tier::kHost, Tier::kNvme, swapped->state.bytes());
      writing.push_back(std::move(swapped));
      // Bound the host memory held by write-backs: wait for the older one.
      if (writing.size() > 1) {
        for (auto& h : writing.front()->io) STRATA_RETURN_IF_ERROR(h.wait());
        writing.erase(writing.begin());
      }
    }
    trace_out.add(StepTrace::kOptimizer, "step " + chunk_name(c), t0, Clock::now());
  }
  for (auto& w : writing)
    for (auto& h : w->io) STRATA_RETURN_IF_ERROR(h.wait());
  param_steps.advance();
  // Persistent chunks stay gathered across steps: refresh them from the new shards.
  try {
    std::vector<std::uint32_t> refresh;
    for (std::uint32_t c = 0; c < chunks.size(); ++c) {
      ChunkRt& k = chunks[c];
      if (!k.persistent || !k.sm.gathered() || k.aliased) continue;
      k.sm.to(ChunkState::kFree);
      ChunkStore::free_storage(store->full(c));
      gathered_bytes -= k.gathered_res.bytes();
      k.gathered_res.release();
      refresh.push_back(c);
    }
    ensure_gathered(refresh);
  } catch (const std::exception& e) {
    const std::string what = e.what();
    return make_error(ErrorCode::kUnavailable, "{}", what.substr(0, what.find('\n')));
  }
  return ok();
}

Result<std::vector<at::Tensor>> Zero3Engine::consolidated_params() {
  Impl& m = *impl_;
  const ChunkStore& store = *m.store;
  std::vector<at::Tensor> out(store.params().size());
  for (std::uint32_t c = 0; c < m.chunks.size(); ++c) {
    ChunkRt& k = m.chunks[c];
    at::Tensor master;
    if (!k.trainable) {
      // Frozen: the compute-dtype shard is the value.
      master = k.shard_tier == Tier::kNvme ? at::empty({store.shard_elems(c)}, store.full(c).options()) : k.shard;
      if (k.shard_tier == Tier::kNvme) STRATA_RETURN_IF_ERROR(m.load_shard(c, master));
      master = master.to(at::kFloat);
    } else if (k.optim_tier == Tier::kNvme) {
      STRATA_ASSIGN_OR_RETURN(auto s, m.swap_in_state(c));
      for (auto& h : s->io) STRATA_RETURN_IF_ERROR(h.wait());
      master = s->state.master;
    } else {
      master = k.optim.master;
    }
    at::Tensor full = at::empty({store.chunk_elems(c)}, at::kFloat);
    if (m.comm->world() > 1) STRATA_RETURN_IF_ERROR(m.comm->all_gather(master.contiguous(), full).wait());
    else full.copy_(master);
    for (const plan::ParamSlot& slot : store.chunk(c).params) {
      out[slot.param] = full.narrow(0, static_cast<std::int64_t>(slot.offset_elems), static_cast<std::int64_t>(slot.numel))
                            .view(store.params()[slot.param].sizes())
                            .clone();
    }
  }
  return out;
}

Result<plan::Schedule> Zero3Engine::Impl::plan_schedule(std::span<const plan::ModuleAccess> accesses) {
  std::map<int, std::vector<plan::ChunkId>> module_chunks;
  for (const UnitRt& u : units) module_chunks[u.id] = {u.chunks.begin(), u.chunks.end()};
  plan::ScheduleInput in{.chunks = sched_chunks, .accesses = plan::chunk_accesses(accesses, module_chunks),
                         .options = opt.schedule};
  if (access_live_bytes.size() == in.accesses.size()) {
    for (std::size_t i = 0; i < in.accesses.size(); ++i) in.accesses[i].reserved_compute_bytes = access_live_bytes[i];
  }
  return plan::make_schedule(in);
}

Status Zero3Engine::Impl::end_trace_step() {
  const bool was_recording = trace.state() == plan::AccessTrace::State::kRecord;
  trace.end_step();
  in_step = false;
  if (!trace.complete()) {
    schedule.reset();
    return ok();
  }
  if (!was_recording) return ok();
  // Every rank must have seen the same sequence, or their collectives would diverge.
  const std::int64_t mine = static_cast<std::int64_t>(trace.hash());
  at::Tensor local = at::full({1}, mine, at::kLong), all = at::empty({comm->world()}, at::kLong);
  STRATA_RETURN_IF_ERROR(comm->all_gather(local, all).wait());
  for (int r = 0; r < comm->world(); ++r) {
    if (all[r].item<std::int64_t>() != mine) {
      return make_error(ErrorCode::kFailedPrecondition,
                        "the access trace differs across ranks: rank {} recorded {} accesses with hash {:016x}, rank {} "
                        "hash {:016x}; every rank must run the same modules in the same order",
                        comm->rank(), trace.accesses().size(), static_cast<std::uint64_t>(mine), r,
                        static_cast<std::uint64_t>(all[r].item<std::int64_t>()))
          .with_rank(comm->rank());
    }
  }
  if (opt.placement == Placement::kAuto) STRATA_RETURN_IF_ERROR(fit_auto_placement());
  STRATA_ASSIGN_OR_RETURN(plan::Schedule s, plan_schedule(trace.accesses()));
  log::debug("zero3: trace of {} accesses frozen (hash {:016x}); schedule: {} gathers, {} prefetched, host<->compute {}",
             trace.accesses().size(), trace.hash(), s.n_gathers, s.n_prefetched, format_bytes(s.moved.host_compute()));
  schedule = std::move(s);
  return ok();
}

}  // namespace strata::engine
