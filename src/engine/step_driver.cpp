#include "step_driver.h"

#include <ATen/ATen.h>
#include <torch/optim/optimizer.h>

#include "strata/base/log.h"

namespace strata::engine {

StepDriver::StepDriver(EngineCore& core, const StepKernel& kernel, GradReducer& reducer, OptimStateHolder& holder,
                       Gatherer& gatherer)
    : core_(core),
      kernel_(kernel),
      reducer_(reducer),
      holder_(holder),
      gatherer_(gatherer),
      scaler_(core.opt.fp16),
      param_steps_(core.chunks->store().params().size()) {}

StepDriver::~StepDriver() = default;

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
  for (std::uint32_t c = 0; c < core_.chunks->size(); ++c) {
    if (!(*core_.chunks)[c].trainable) continue;
    STRATA_ASSIGN_OR_RETURN(kernels::GradStats s, reducer_.local_stats(c, inv_scale, core_.pool.get()));
    local.merge(s);
  }
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
  const std::vector<plan::Op> ops = plan::step_ops(core_.chunks->schedule_chunks(), core_.chunk_world());
  STRATA_RETURN_IF_ERROR(wrapped_ ? step_wrapped(coef / r.loss_scale) : run_ops(ops, coef / r.loss_scale));
  param_steps_.advance();
  return ok();
}

Status StepDriver::run_ops(std::span<const plan::Op> ops, double grad_scale) {
  // Read ahead: the first load, and at each step the next one (Note [nvme optimizer state]).
  auto prefetch_after = [&](std::size_t i) -> Status {
    for (std::size_t j = i + 1; j < ops.size(); ++j)
      if (ops[j].kind == plan::OpKind::kLoad) return holder_.prefetch(ops[j].chunk);
    return ok();
  };
  STRATA_RETURN_IF_ERROR(prefetch_after(static_cast<std::size_t>(-1)));
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const plan::Op& op = ops[i];
    switch (op.kind) {
      case plan::OpKind::kLoad: STRATA_RETURN_IF_ERROR(holder_.prefetch(op.chunk)); break;
      case plan::OpKind::kStep:
        STRATA_RETURN_IF_ERROR(prefetch_after(i));
        STRATA_RETURN_IF_ERROR(step_chunk(op.chunk, grad_scale));
        break;
      case plan::OpKind::kStore:
        if (op.what == StateKind::kOptimizer) STRATA_RETURN_IF_ERROR(holder_.release(op.chunk));  // state to nvme
        else STRATA_RETURN_IF_ERROR(store_param(op.chunk));  // the new parameter shard home
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
  return gatherer_.finish_refresh();
}

bool StepDriver::steps_every_param(std::uint32_t c) const {
  for (const auto& slot : core_.chunks->slots(c))
    if (!param_steps_.ever_had_grad[slot.param]) return false;
  return true;
}

Status StepDriver::step_chunk(std::uint32_t c, double grad_scale) {
  const auto t0 = Clock::now();
  ChunkRt& k = (*core_.chunks)[c];
  STRATA_ASSIGN_OR_RETURN(ShardState * state, holder_.acquire(c));
  // Note [gradients on nvme]: read in with the state.
  const at::Tensor& grad = k.grads_on_nvme ? holder_.grad(c) : reducer_.grad_shard(c);
  STRATA_ASSIGN_OR_RETURN(kernels::DType gdt, kernel_dtype(grad.scalar_type()));
  STRATA_ASSIGN_OR_RETURN(kernels::DType pdt, kernel_dtype(core_.opt.compute_dtype));
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
  if (!direct && k.shard_tier != Tier::kNvme) {
    out = at::empty({n}, core_.opt.compute_dtype);  // only the stepped runs go home
  } else if (!direct && steps_every_param(c)) {
    out = aligned_empty(n, core_.opt.compute_dtype).zero_();  // the whole record goes home: padding stays zero
  } else if (!direct) {
    out = aligned_empty(n, core_.opt.compute_dtype);
    STRATA_RETURN_IF_ERROR(core_.chunks->load_shard(c, out));
    core_.account(Tier::kNvme, Tier::kHost, core_.chunks->shard_bytes(c));
  }
  std::vector<ShardRun> stepped;
  // Note [shard from master]: no shard to write; the next gather casts the new master.
  void* param_out = out.defined() ? out.data_ptr() : nullptr;
  STRATA_RETURN_IF_ERROR(step_shard(kernel_, *state, core_.chunks->slots(c), param_steps_, grad.data_ptr(), gdt,
                                    param_out, pdt, grad_scale, core_.pool.get(), &stepped));
  if (!direct) staged_ = Staged{.chunk = c, .values = out, .stepped = std::move(stepped)};
  core_.trace.add(StepTrace::kOptimizer, "step " + core_.chunks->name(c), t0, Clock::now());
  return ok();
}

Status StepDriver::store_param(std::uint32_t c) {
  TORCH_INTERNAL_ASSERT(staged_ && staged_->chunk == c, "a parameter store op without its step");
  ChunkRt& k = (*core_.chunks)[c];
  const Staged s = std::move(*staged_);
  staged_.reset();
  const Tier from = core_.chunks->step_tier(c);
  if (k.shard_tier == Tier::kNvme) {
    STRATA_RETURN_IF_ERROR(core_.chunks->store_shard(c, s.values));
    core_.account(from, Tier::kNvme, core_.chunks->shard_bytes(c));
    return ok();
  }
  const std::uint64_t elem = s.values.element_size();
  for (const ShardRun& run : s.stepped) {
    k.shard.narrow(0, run.begin, run.end - run.begin).copy_(s.values.narrow(0, run.begin, run.end - run.begin));
    core_.account(from, k.shard_tier, static_cast<std::uint64_t>(run.end - run.begin) * elem);
  }
  return ok();
}

// The wrapped torch::optim optimizer steps whole master shards. Elements of parameters
// torch::optim would skip (no gradient ever: frozen or unused) keep their masters, and
// only the stepped parameters' compute copies are written.
Status StepDriver::step_wrapped(double grad_scale) {
  std::vector<std::vector<std::pair<const ChunkStore::ShardSlot*, at::Tensor>>> kept(wrapped_chunks_.size());
  for (std::size_t i = 0; i < wrapped_chunks_.size(); ++i) {
    const std::uint32_t c = wrapped_chunks_[i];
    wrapped_params_[i].mutable_grad() = reducer_.grad_shard(c).to(at::kFloat).mul_(grad_scale);
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
