#include "step_driver.h"

#include <algorithm>
#include <optional>
#include <utility>

#include <ATen/ATen.h>
#include <torch/optim/optimizer.h>

#include "strata/base/log.h"
#include "strata/comm/communicator.h"

namespace strata::engine {

StepDriver::StepDriver(EngineCore& core, const StepKernel& kernel, GradReducer& reducer, OptimStateHolder& holder,
                       Gatherer& gatherer)
    : core_(core),
      kernel_(kernel),
      reducer_(reducer),
      holder_(holder),
      gatherer_(gatherer),
      scaler_(core.opt.fp16),
      param_steps_(core.chunks->store().params().size()),
      copies_(core.chunks->store().options().device) {}

StepDriver::~StepDriver() { reap_shard_copies(/*wait=*/true); }

Status StepDriver::wrap(const OptimizerFactory& factory) {
  for (std::uint32_t c = 0; c < core_.chunks->size(); ++c) {
    if (!(*core_.chunks)[c].trainable) continue;
    STRATA_ASSIGN_OR_RETURN(ShardState * s, holder_.acquire(c));
    wrapped_chunks_.push_back(c);
    wrapped_params_.push_back(s->master.detach().requires_grad_(true));
  }
  wrapped_ = factory(wrapped_params_);
  if (!wrapped_) return make_error(ErrorCode::kInvalidArgument, "the optimizer factory returned null");
  return ok();
}

Result<kernels::GradStats> StepDriver::global_stats(double inv_scale) {
  STRATA_RETURN_IF_ERROR(reducer_.finish());
  kernels::GradStats local;
  // Note [one copy for the gradient norm]: shards whose figures are tensor ops leave
  // their partials on their device (a GPU, or the host under host_step), and each
  // device's come over in one copy.
  std::vector<std::pair<c10::Device, std::vector<at::Tensor>>> partials;
  for (std::uint32_t c = 0; c < core_.chunks->size(); ++c) {
    if (!(*core_.chunks)[c].trainable) continue;
    if (std::optional<at::Tensor> p = reducer_.tensor_partials(c)) {
      auto on = std::find_if(partials.begin(), partials.end(), [&](const auto& d) { return d.first == p->device(); });
      if (on == partials.end()) on = partials.insert(partials.end(), {p->device(), {}});
      on->second.push_back(std::move(*p));
      continue;
    }
    STRATA_ASSIGN_OR_RETURN(kernels::GradStats s, reducer_.local_stats(c, inv_scale));
    local.merge(s);
  }
  for (const auto& [device, rows] : partials) local.merge(merge_grad_partials(at::stack(rows), inv_scale));
  // Stage 0: every rank holds the whole (already averaged) gradient.
  if (core_.chunk_world() == 1) return local;
  return all_reduce_stats(local, core_.comm);
}

Result<double> StepDriver::clip_grad_norm(double max_norm, double norm_type) {
  STRATA_ASSIGN_OR_RETURN(kernels::GradStats g, global_stats(1.0 / scaler_.scale()));
  stats_ = g;
  const double norm = g.norm(norm_type);
  clip_coef_ = kernels::clip_coefficient(norm, max_norm);
  return norm;
}

Status StepDriver::step(StepResult& r) {
  if (!stats_) {
    STRATA_ASSIGN_OR_RETURN(stats_, global_stats(1.0 / scaler_.scale()));
  }
  const kernels::GradStats stats = *stats_;
  r.grad_norm = stats.norm(2.0);
  const double coef = clip_coef_ ? *clip_coef_ : kernels::clip_coefficient(r.grad_norm, core_.opt.gradient_clipping);
  stats_.reset();
  clip_coef_.reset();
  r.applied = scaler_.update(stats.nonfinite);
  if (!r.applied) {
    log::warn("step {}: gradient overflow at loss scale {}; step skipped, scale now {}", r.step, r.loss_scale,
              scaler_.scale());
    return ok();
  }
  STRATA_RETURN_IF_ERROR(param_steps_.sync(reducer_.had_grad(), core_.comm));
  if (wrapped_) {
    STRATA_RETURN_IF_ERROR(step_wrapped(coef / r.loss_scale));
  } else {
    if (kernel_.type() == OptimizerType::kLamb) STRATA_RETURN_IF_ERROR(lamb_first_pass(coef / r.loss_scale));
    STRATA_RETURN_IF_ERROR(run_ops(step_ops(), coef / r.loss_scale));
  }
  param_steps_.advance();
  return ok();
}

Status StepDriver::run_ops(std::span<const plan::Op> ops, double grad_scale) {
  // Note [nvme optimizer state]: every nvme sub-group in step order, and the read ahead
  // along it: before sub-group i steps, the next read_ahead_depth() ones are requested.
  reads_ = nvme_groups();
  next_read_ = next_step_ = 0;
  holder_.begin_step(/*with_grads=*/kernel_.type() != OptimizerType::kLamb);  // Note [Lamb's two passes]
  STRATA_RETURN_IF_ERROR(read_ahead(0));
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const plan::Op& op = ops[i];
    switch (op.kind) {
      case plan::OpKind::kLoad: break;  // the read ahead requests it
      case plan::OpKind::kStep: STRATA_RETURN_IF_ERROR(step_chunk(op.chunk, grad_scale)); break;
      case plan::OpKind::kStore:
        // Optimizer state went back to nvme sub-group by sub-group as step_chunk stepped it.
        if (op.what != StateKind::kOptimizer) STRATA_RETURN_IF_ERROR(store_param(op.chunk));  // the new shard home
        break;
      case plan::OpKind::kGather: gatherer_.refresh(op.chunk); break;
      case plan::OpKind::kRelease:
      case plan::OpKind::kEvict:
      case plan::OpKind::kReduceScatter:
        TORCH_INTERNAL_ASSERT(false, "the step ops have a ", plan::to_string(op.kind), " op");
    }
  }
  // Chunks stepped in place (no store op) leave nothing staged.
  staged_.reset();
  STRATA_RETURN_IF_ERROR(holder_.flush());
  STRATA_RETURN_IF_ERROR(flush_param_writes());
  // Note [shards back to the GPU]: no staging shard outlives the step; the forward after
  // it needs the new shards anyway, and the host budget gets its room back.
  reap_shard_copies(/*wait=*/true);
  return gatherer_.finish_refresh();
}

std::vector<plan::Op> StepDriver::step_ops() const {
  return plan::step_ops(core_.chunks->schedule_chunks(), core_.chunk_world());
}

std::vector<std::pair<std::uint32_t, std::uint32_t>> StepDriver::nvme_groups() const {
  std::vector<std::pair<std::uint32_t, std::uint32_t>> out;
  for (const plan::Op& op : step_ops())
    if (op.kind == plan::OpKind::kStep && (*core_.chunks)[op.chunk].optim_tier == Tier::kNvme)
      for (std::uint32_t g = 0; g < holder_.groups(op.chunk).size(); ++g) out.push_back({op.chunk, g});
  return out;
}

Status StepDriver::read_early() {
  if (wrapped_ || !core_.swap) return ok();
  const auto groups = nvme_groups();
  const std::size_t n = std::min(groups.size(), static_cast<std::size_t>(holder_.early_reads()));
  for (std::size_t i = 0; i < n; ++i) STRATA_RETURN_IF_ERROR(holder_.prefetch(groups[i].first, groups[i].second));
  return ok();
}

// Requests the reads of the sub-groups after position `at` (the one about to step) up to
// the read-ahead depth; `at` itself is requested first when nothing read it ahead.
Status StepDriver::read_ahead(std::size_t at) {
  const std::size_t until = std::min(reads_.size(), at + 1 + static_cast<std::size_t>(holder_.read_ahead_depth()));
  for (next_read_ = std::max(next_read_, at); next_read_ < until; ++next_read_)
    STRATA_RETURN_IF_ERROR(holder_.prefetch(reads_[next_read_].first, reads_[next_read_].second));
  return ok();
}

bool StepDriver::steps_every_param(std::uint32_t c) const {
  for (const auto& slot : core_.chunks->slots(c))
    if (!param_steps_.ever_had_grad[slot.param]) return false;
  return true;
}

Status StepDriver::step_chunk(std::uint32_t c, double grad_scale) {
  const auto t0 = Clock::now();
  ChunkRt& k = (*core_.chunks)[c];
  // The kernel writes the new compute-dtype shard straight into the shard when it
  // lives where the step runs, else into a staging shard that the store op takes home.
  // Note [step writes only what it computed]: the kernel skips frozen parameters and
  // parameters that never had a gradient, so a staging shard holds new values only in
  // the runs it stepped, and only those go home. A record on nvme is written whole, so
  // when some parameter of the shard is not stepped, the staging shard starts as the
  // record's current contents.
  const bool direct = k.shard_tier == core_.chunks->step_tier(c);
  const std::int64_t n = core_.chunks->store().shard_elems(c);
  at::Tensor out = k.shard;
  StagingCache::Buffer staging;
  if (!direct && k.shard_tier != Tier::kNvme) {
    const auto reserve = [&] {
      return core_.chunks->reserve(Tier::kHost, core_.chunks->shard_bytes(c), StateKind::kBuffers, c,
                                   "param step staging");
    };
    reap_shard_copies(/*wait=*/false);
    auto res = reserve();
    if (!res && !shard_copies_.empty()) {  // staging shards still being copied hold the room
      reap_shard_copies(/*wait=*/true);
      res = reserve();
    }
    STRATA_ASSIGN_OR_RETURN(staging.res, std::move(res));
    // Only the stepped runs go home (to a GPU: from pinned memory, Note [pinned host tensors]).
    out = host_empty_for(core_.chunks->store().options().device, n, core_.opt.compute_dtype);
  } else if (!direct) {
    STRATA_ASSIGN_OR_RETURN(staging, param_buffers().take());  // Note [reused staging]
    out = staging.view(n);
    if (steps_every_param(c)) out.zero_();  // the whole record goes home: padding stays zero
    else STRATA_RETURN_IF_ERROR(read_param_shard(c, out));
  }
  std::vector<ElemRange> stepped;
  // Note [shard from master]: `out` is undefined, no shard to write; the next gather
  // casts the new master.
  const bool tensor_ops = core_.opt.host_step == EngineOptions::StepKernels::kTensorOps;
  const std::vector<ElemRange> groups = holder_.groups(c);
  const bool nvme = k.optim_tier == Tier::kNvme;
  // Note [Lamb's two passes]: Lamb's second pass reads no gradient.
  const bool lamb = kernel_.type() == OptimizerType::kLamb;
  StagingCache::Buffer grad_host;  // Note [gradients kept on compute]
  if (k.grads_on_compute && !lamb) {
    STRATA_ASSIGN_OR_RETURN(grad_host, grad_to_host(c));
  }
  const at::Tensor grads = lamb ? at::Tensor() : k.grads_on_compute ? grad_host.view(n) : reducer_.grad_shard(c);
  for (std::uint32_t g = 0; g < groups.size(); ++g) {
    if (nvme) STRATA_RETURN_IF_ERROR(read_ahead(next_step_++));
    STRATA_ASSIGN_OR_RETURN(ShardState * state, holder_.acquire(c, g));
    if (lamb) {
      STRATA_RETURN_IF_ERROR(lamb_apply_shard(kernel_, *state, core_.chunks->slots(c), param_steps_, out, tensor_ops,
                                              core_.pool.get(), &stepped, groups[g], lamb_ratios_));
    } else {
      // Note [gradients on nvme]: read in with the state, one sub-group at a time.
      const at::Tensor grad =
          k.grads_on_nvme ? holder_.grad(c, g) : grads.narrow(0, groups[g].begin, groups[g].size());
      STRATA_RETURN_IF_ERROR(step_shard(kernel_, *state, core_.chunks->slots(c), param_steps_, grad, out, grad_scale,
                                        tensor_ops, core_.pool.get(), &stepped, groups[g]));
    }
    // Lamb's second pass changed the master only (Note [Lamb's two passes]).
    if (nvme) STRATA_RETURN_IF_ERROR(holder_.release(c, g, lamb ? OptimStateHolder::kMaster : OptimStateHolder::kAll));
  }
  if (!direct) staged_ = Staged{.chunk = c, .values = out, .stepped = std::move(stepped), .staging = std::move(staging)};
  grad_buffers_.give(std::move(grad_host));
  core_.trace.add(StepTrace::kOptimizer, "step " + core_.chunks->name(c), t0, Clock::now());
  return ok();
}

Status StepDriver::lamb_first_pass(double grad_scale) {
  const auto t0 = Clock::now();
  const std::size_t n_params = core_.chunks->store().params().size();
  LambNorms norms(n_params);
  const bool tensor_ops = core_.opt.host_step == EngineOptions::StepKernels::kTensorOps;
  reads_ = nvme_groups();
  next_read_ = next_step_ = 0;
  holder_.begin_step();
  STRATA_RETURN_IF_ERROR(read_ahead(0));
  for (const plan::Op& op : step_ops()) {
    if (op.kind != plan::OpKind::kStep) continue;
    const std::uint32_t c = op.chunk;
    const ChunkRt& k = (*core_.chunks)[c];
    const bool nvme = k.optim_tier == Tier::kNvme;
    StagingCache::Buffer grad_host;  // Note [gradients kept on compute]
    if (k.grads_on_compute) {
      STRATA_ASSIGN_OR_RETURN(grad_host, grad_to_host(c));
    }
    const at::Tensor grads =
        k.grads_on_compute ? grad_host.view(core_.chunks->store().shard_elems(c)) : reducer_.grad_shard(c);
    const std::vector<ElemRange> groups = holder_.groups(c);
    for (std::uint32_t g = 0; g < groups.size(); ++g) {
      if (nvme) STRATA_RETURN_IF_ERROR(read_ahead(next_step_++));
      STRATA_ASSIGN_OR_RETURN(ShardState * state, holder_.acquire(c, g));
      const at::Tensor grad =
          k.grads_on_nvme ? holder_.grad(c, g) : grads.narrow(0, groups[g].begin, groups[g].size());
      STRATA_RETURN_IF_ERROR(lamb_moments_shard(kernel_, *state, core_.chunks->slots(c), param_steps_, grad, grad_scale,
                                                tensor_ops, core_.pool.get(), groups[g], norms));
      if (nvme) STRATA_RETURN_IF_ERROR(holder_.release(c, g, OptimStateHolder::kStates));  // m and v
    }
    grad_buffers_.give(std::move(grad_host));
  }
  STRATA_RETURN_IF_ERROR(holder_.flush());
  std::vector<kernels::LambSums>& sums = norms.settle();
  // A parameter's pieces lie on several ranks: one all-reduce adds every parameter's sums.
  if (core_.chunk_world() > 1 && n_params > 0) {
    at::Tensor all = at::empty({static_cast<std::int64_t>(n_params), 2}, at::kDouble);
    double* a = all.data_ptr<double>();
    for (std::size_t i = 0; i < n_params; ++i) {
      a[2 * i] = sums[i].p_sq;
      a[2 * i + 1] = sums[i].u_sq;
    }
    STRATA_RETURN_IF_ERROR(core_.comm.all_reduce(all, comm::ReduceOp::kSum).wait());
    for (std::size_t i = 0; i < n_params; ++i) sums[i] = {.p_sq = a[2 * i], .u_sq = a[2 * i + 1]};
  }
  lamb_ratios_.resize(n_params);
  for (std::size_t i = 0; i < n_params; ++i) lamb_ratios_[i] = kernel_.lamb_ratio(sums[i], kernel_.group_of(i));
  core_.trace.add(StepTrace::kOptimizer, "lamb norms", t0, Clock::now());
  return ok();
}

// Note [gradients kept on compute]. One buffer is kept: chunks step one after another.
// A plain copy: the host needs the values now, and on a GPU the copy waits only for the
// work queued before it on the compute stream, which by the step is backward's.
Result<StagingCache::Buffer> StepDriver::grad_to_host(std::uint32_t c) {
  const at::Tensor& shard = reducer_.grad_shard(c);
  if (!grad_buffers_.configured()) {
    const std::int64_t largest = core_.chunks->largest_shard_elems([](const ChunkRt& k) { return k.grads_on_compute; });
    grad_buffers_.configure(largest, shard.scalar_type(), host_memory_for(shard.device()), 1, [this](std::uint64_t bytes) {
      return core_.tiers.reserve(Tier::kHost, bytes, StateKind::kBuffers, "grad step staging");
    });
  }
  STRATA_ASSIGN_OR_RETURN(StagingCache::Buffer b, grad_buffers_.take());
  b.view(shard.numel()).copy_(shard);
  core_.account(Tier::kCompute, Tier::kHost, bytes_of(shard).size());
  return b;
}

Status StepDriver::read_param_shard(std::uint32_t c, const at::Tensor& out) {
  STRATA_RETURN_IF_ERROR(core_.chunks->load_shard(c, out));
  core_.account(Tier::kNvme, Tier::kHost, core_.chunks->shard_bytes(c));
  return ok();
}

StagingCache& StepDriver::param_buffers() {
  if (!param_buffers_.configured()) {
    const std::int64_t largest =
        core_.chunks->largest_shard_elems([](const ChunkRt& k) { return k.shard_tier == Tier::kNvme; });
    // Filled and written on the host only: pageable.
    param_buffers_.configure(largest, core_.opt.compute_dtype, HostMemory::kPageable, kParamWritesInFlight + 1,
                             [this](std::uint64_t bytes) {
      return core_.tiers.reserve(Tier::kHost, bytes, StateKind::kBuffers, "param step staging");
    });
  }
  return param_buffers_;
}

Status StepDriver::store_param(std::uint32_t c) {
  TORCH_INTERNAL_ASSERT(staged_ && staged_->chunk == c, "a parameter store op without its step");
  ChunkRt& k = (*core_.chunks)[c];
  Staged s = std::move(*staged_);
  staged_.reset();
  const Tier from = core_.chunks->step_tier(c);
  if (k.shard_tier == Tier::kNvme) {
    // Written while the next chunks step; the swap store orders a later read of the
    // record after it, and run_ops waits for every write before the step returns.
    STRATA_RETURN_IF_ERROR(flush_param_writes(kParamWritesInFlight - 1));
    io::SwapHandle io = core_.swap->put_async(param_key(c), bytes_of(s.values));
    param_writes_.push_back({.staging = std::move(s.staging), .io = std::move(io)});
    core_.account(from, Tier::kNvme, core_.chunks->shard_bytes(c));
    return ok();
  }
  const std::uint64_t elem = s.values.element_size();
  for (const ElemRange& run : s.stepped) core_.account(from, k.shard_tier, static_cast<std::uint64_t>(run.size()) * elem);
  // Note [shards back to the GPU]: a new shard stepped on the host goes to its GPU-resident
  // shard on the copy stream, while the host steps the next chunks. The compute stream
  // waits for it on the device, before anything queued after (the stage 1-2 all-gather of
  // the updated slices, the next forward's gathers) reads the shard; the host waits only
  // at the end of the step, once every chunk has stepped.
  // The staging shard is pinned (Note [pinned host tensors]) and kept, with its host
  // reservation, until the copy ends: checked before each later chunk reserves its own,
  // waited for when that reservation does not fit, and at the end of the step.
  const auto copy = [&](bool non_blocking) {
    for (const ElemRange& run : s.stepped)
      k.shard.narrow(0, run.begin, run.size()).copy_(s.values.narrow(0, run.begin, run.size()), non_blocking);
  };
  if (!copies_.active() || !s.values.is_cpu() || k.shard.is_cpu()) {
    copy(/*non_blocking=*/false);
    return ok();
  }
  std::optional<c10::Event> done = copies_.run([&] { copy(/*non_blocking=*/true); });
  copies_.compute_waits(*done);
  shard_copies_.push_back({.done = std::move(*done), .staged = std::move(s)});
  return ok();
}

void StepDriver::reap_shard_copies(bool wait) {
  while (!shard_copies_.empty()) {
    if (wait) tiers::CopyStream::host_waits(shard_copies_.front().done);
    else if (!shard_copies_.front().done.query()) return;
    shard_copies_.pop_front();
  }
}

Status StepDriver::flush_param_writes(std::size_t keep) {
  Status first = ok();
  while (param_writes_.size() > keep) {
    ParamWrite w = std::move(param_writes_.front());
    param_writes_.pop_front();
    if (Status st = w.io.wait(); !st && first) first = std::move(st);
    param_buffers_.give(std::move(w.staging));
  }
  return first;
}

// The wrapped torch::optim optimizer steps whole master shards. Elements of parameters
// torch::optim would skip (no gradient ever: frozen or unused) keep their masters, and
// only the stepped parameters' compute copies are written.
Status StepDriver::step_wrapped(double grad_scale) {
  std::vector<std::vector<std::pair<const ChunkStore::ShardSlot*, at::Tensor>>> kept(wrapped_chunks_.size());
  for (std::size_t i = 0; i < wrapped_chunks_.size(); ++i) {
    const std::uint32_t c = wrapped_chunks_[i];
    // On the master's device: a shard kept on compute (Note [gradients kept on compute]) comes over.
    wrapped_params_[i].mutable_grad() =
        reducer_.grad_shard(c).to(wrapped_params_[i].device(), at::kFloat).mul_(grad_scale);
    for (const auto& slot : core_.chunks->slots(c))
      if (!param_steps_.ever_had_grad[slot.param])
        kept[i].emplace_back(&slot, wrapped_params_[i].detach().narrow(0, slot.shard_offset, slot.numel).clone());
  }
  try {
    wrapped_->step();
  } catch (const std::exception& e) {
    const std::string what = e.what();
    return make_error(ErrorCode::kInternal, "wrapped optimizer step failed: {}", what.substr(0, what.find('\n')));
  }
  for (std::size_t i = 0; i < wrapped_chunks_.size(); ++i) {
    const std::uint32_t c = wrapped_chunks_[i];
    at::Tensor master = wrapped_params_[i].detach();
    for (auto& [slot, value] : kept[i]) master.narrow(0, slot->shard_offset, slot->numel).copy_(value);
    ChunkRt& k = (*core_.chunks)[c];
    // RNE cast into the shard, parameter by parameter: never a frozen one.
    at::Tensor out = k.shard_tier == Tier::kNvme ? aligned_empty(core_.chunks->store().shard_elems(c), core_.opt.compute_dtype) : k.shard;
    if (k.shard_tier == Tier::kNvme) STRATA_RETURN_IF_ERROR(core_.chunks->load_shard(c, out));
    for (const auto& slot : core_.chunks->slots(c))
      if (param_steps_.ever_had_grad[slot.param])
        out.narrow(0, slot.shard_offset, slot.numel).copy_(master.narrow(0, slot.shard_offset, slot.numel));
    if (k.shard_tier == Tier::kNvme) STRATA_RETURN_IF_ERROR(core_.chunks->store_shard(c, out));
    if (k.residency == Residency::kReplicated && core_.chunk_world() > 1) gatherer_.refresh(c);
  }
  return gatherer_.finish_refresh();
}

}  // namespace strata::engine
