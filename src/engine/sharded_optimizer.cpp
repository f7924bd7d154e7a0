#include "strata/engine/sharded_optimizer.h"

#include <cmath>

#include <ATen/ATen.h>
#include <torch/optim/optimizer.h>

#include "grad_reducer.h"
#include "sharded_optimizer_impl.h"
#include "strata/base/log.h"
#include "strata/base/thread_pool.h"
#include "strata/comm/communicator.h"
#include "strata/kernels/grad_prologue.h"

namespace strata::engine {

Result<ShardedOptimizerOptions> ShardedOptimizerOptions::from_config(const Config& cfg) {
  ShardedOptimizerOptions o;
  o.stage = cfg.zero_optimization.stage;
  o.optimizer = cfg.optimizer;
  o.fp16 = cfg.fp16;
  o.compute_dtype = cfg.bf16.enabled ? at::kBFloat16 : cfg.fp16.enabled ? at::kHalf : at::kFloat;
  o.gradient_clipping = cfg.gradient_clipping;
  o.gradient_accumulation_steps = static_cast<int>(cfg.gradient_accumulation_steps);
  o.reduce_bucket_size = cfg.zero_optimization.reduce_bucket_size;
  o.overlap_comm = cfg.zero_optimization.overlap_comm;
  o.optimizer_threads = cfg.strata.optimizer_threads;
  o.chunks.chunk_size_elems = cfg.strata.chunk_size;
  o.chunks.search_range_elems = cfg.strata.chunk_search_range;
  o.chunks.compute_dtype = o.compute_dtype;
  STRATA_RETURN_IF_ERROR(o.validate());
  return o;
}

Status ShardedOptimizerOptions::validate() const {
  if (stage < 0 || stage > 2) {
    return make_error(ErrorCode::kInvalidArgument, "ShardedOptimizer runs ZeRO stage 0, 1 or 2, not {}", stage);
  }
  if (gradient_accumulation_steps < 1) {
    return make_error(ErrorCode::kInvalidArgument, "gradient_accumulation_steps must be >= 1");
  }
  if (reduce_bucket_size == 0) return make_error(ErrorCode::kInvalidArgument, "reduce_bucket_size must be >= 1");
  STRATA_RETURN_IF_ERROR(kernel_dtype(compute_dtype));
  return ok();
}

ShardedOptimizer::ShardedOptimizer(comm::Communicator& comm, ShardedOptimizerOptions options)
    : impl_(std::make_unique<Impl>()), comm_(comm), options_(std::move(options)), scaler_(options_.fp16) {}

ShardedOptimizer::~ShardedOptimizer() = default;

Result<std::unique_ptr<ShardedOptimizer>> ShardedOptimizer::create(std::vector<at::Tensor> params,
                                                                   comm::Communicator& comm,
                                                                   ShardedOptimizerOptions options) {
  // Stage 0 is plain data parallelism: every rank holds the whole state (a shard of a
  // one-rank world) and gradients are all-reduced, as in stage 1.
  options.chunks.world = options.stage == 0 ? 1 : comm.world();
  options.chunks.rank = options.stage == 0 ? 0 : comm.rank();
  options.chunks.compute_dtype = options.compute_dtype;
  STRATA_RETURN_IF_ERROR(options.validate());
  // Frozen parameters are not the optimizer's business: they stay as they are.
  std::vector<at::Tensor> trainable;
  for (auto& p : params)
    if (p.requires_grad()) trainable.push_back(p);

  std::unique_ptr<ShardedOptimizer> opt(new ShardedOptimizer(comm, options));
  Impl& impl = *opt->impl_;
  STRATA_ASSIGN_OR_RETURN(impl.kernel, StepKernel::create(options.optimizer));
  // Masters come from the parameters' original values, before any cast to bf16/fp16.
  auto fill_master = [&impl](const ChunkStore& store, std::size_t param, const at::Tensor& original) {
    const std::size_t c = store.layout().where[param].chunk;
    if (impl.shards.empty()) {
      for (std::size_t k = 0; k < store.num_chunks(); ++k)
        impl.shards.push_back(ShardState::make(store.shard_elems(k), impl.kernel));
    }
    at::Tensor flat = original.reshape({-1});
    for (const auto& slot : store.shard_slots(c, store.options().rank)) {
      if (slot.param != param) continue;
      impl.shards[c].master.narrow(0, slot.shard_offset, slot.numel)
          .copy_(flat.narrow(0, slot.param_offset, slot.numel));
    }
  };
  STRATA_ASSIGN_OR_RETURN(opt->store_, ChunkStore::create(trainable, options.chunks, {}, fill_master));
  ChunkStore& store = *opt->store_;
  if (impl.shards.empty()) {  // a model with no trainable parameters
    for (std::size_t k = 0; k < store.num_chunks(); ++k)
      impl.shards.push_back(ShardState::make(store.shard_elems(k), impl.kernel));
  }
  impl.param_steps = ParamSteps(store.params().size());
  impl.pool = std::make_unique<ThreadPool>(static_cast<std::size_t>(std::max(0, options.optimizer_threads)));
  impl.reducer = std::make_unique<GradReducer>(store, comm, options.stage, options.reduce_bucket_size,
                                               options.overlap_comm);
  impl.reducer->install_hooks();
  for (std::size_t c = 0; c < store.num_chunks(); ++c) impl.slots.push_back(store.shard_slots(c, options.chunks.rank));
  if (options.wrap) {
    for (auto& s : impl.shards) impl.wrapped_params.push_back(s.master.detach().requires_grad_(true));
    impl.wrapped = options.wrap(impl.wrapped_params);
    if (!impl.wrapped) return make_error(ErrorCode::kInvalidArgument, "the optimizer factory returned null");
  }
  log::debug("sharded optimizer: stage {}, {} chunks, {} elements of state on rank {}", options.stage,
             store.num_chunks(), opt->state_bytes() / 4, comm.rank());
  return opt;
}

bool ShardedOptimizer::at_boundary() const {
  return (micro_step_ + 1) % options_.gradient_accumulation_steps == 0;
}

Status ShardedOptimizer::backward(const at::Tensor& loss) {
  if (!loss.defined() || loss.numel() != 1) {
    return make_error(ErrorCode::kInvalidArgument, "backward needs a scalar loss");
  }
  impl_->reducer->begin_backward(at_boundary());
  const double factor = scaler_.scale() / options_.gradient_accumulation_steps;
  try {
    (factor == 1.0 ? loss : loss * factor).backward();
  } catch (const std::exception& e) {
    const std::string what = e.what();
    return make_error(ErrorCode::kInternal, "backward failed: {}", what.substr(0, what.find('\n')));
  }
  return ok();
}

Result<kernels::GradStats> ShardedOptimizer::Impl::global_stats(ChunkStore& store, comm::Communicator& comm,
                                                                  double inv_scale) {
  STRATA_RETURN_IF_ERROR(reducer->finish());
  kernels::GradStats local;
  for (std::size_t c = 0; c < store.num_chunks(); ++c) {
    const at::Tensor& g = reducer->grad_shard(c);
    STRATA_ASSIGN_OR_RETURN(kernels::DType dt, kernel_dtype(g.scalar_type()));
    STRATA_ASSIGN_OR_RETURN(kernels::GradStats s,
                            kernels::grad_prologue(g.data_ptr(), dt, g.numel(), inv_scale, pool.get()));
    local.merge(s);
  }
  return all_reduce_stats(local, comm);
}

Result<double> ShardedOptimizer::clip_grad_norm(double max_norm, double norm_type) {
  STRATA_ASSIGN_OR_RETURN(kernels::GradStats g, impl_->global_stats(*store_, comm_, 1.0 / scaler_.scale()));
  impl_->stats = g;
  const double norm = g.norm(norm_type);
  impl_->clip_coef = kernels::clip_coefficient(norm, max_norm);
  return norm;
}

Result<StepResult> ShardedOptimizer::step() {
  StepResult r;
  r.loss_scale = scaler_.scale();
  r.step = step_count_;
  const bool boundary = at_boundary();
  ++micro_step_;
  if (!boundary) return r;
  r.boundary = true;
  Impl& impl = *impl_;
  // Reduction, then one global look at the gradients: overflow, norm, clip coefficient.
  if (!impl.stats) {
    STRATA_ASSIGN_OR_RETURN(impl.stats, impl.global_stats(*store_, comm_, 1.0 / scaler_.scale()));
  }
  const kernels::GradStats stats = *impl.stats;
  r.grad_norm = stats.norm(2.0);
  double coef = impl.clip_coef ? *impl.clip_coef : kernels::clip_coefficient(r.grad_norm, options_.gradient_clipping);
  impl.stats.reset();
  impl.clip_coef.reset();
  r.applied = scaler_.update(stats.nonfinite);
  if (r.applied) {
    STRATA_RETURN_IF_ERROR(impl.param_steps.sync(impl.reducer->had_grad(), comm_));
    STRATA_RETURN_IF_ERROR(impl.apply(*store_, comm_, coef / r.loss_scale));
    ++step_count_;
  } else {
    log::warn("step {}: gradient overflow at loss scale {}; step skipped, scale now {}", step_count_, r.loss_scale,
              scaler_.scale());
  }
  impl.reducer->reset();
  r.step = step_count_;
  return r;
}

std::uint64_t ShardedOptimizer::state_bytes() const {
  std::uint64_t b = 0;
  for (const auto& s : impl_->shards) b += s.bytes();
  return b;
}

}  // namespace strata::engine
