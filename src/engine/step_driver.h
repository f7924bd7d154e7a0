// StepDriver: the optimizer step, the same for every stage. Internal to src/engine.
//
// At the accumulation boundary: one gradient prologue over every gradient shard (unscale,
// inf/NaN check, norm partials) reduced across ranks; dynamic loss scaling (an overflow
// skips the step on every rank); clipping folded into the kernel's gradient scale; then
// the planner's step ops (plan::step_ops, Note [step ops]) carried out in order:
//   load    the chunk's nvme state starts coming in, sub-group by sub-group (read ahead:
//           the next sub-groups' state is requested while this one steps)
//   step    the fused kernel over this rank's shard, sub-group by sub-group: master,
//           state and the compute-dtype parameter shard (nvme state goes back, async,
//           as each sub-group is done), or the wrapped torch::optim optimizer
//   store   the new parameter shard to its home tier (to nvme async: written while the
//           next chunks step, all done before step() returns; to a GPU on a copy stream,
//           Note [shards back to the GPU])
//   gather  replicated chunks (stages 1-2): the updated slices all-gathered
// Note [Lamb's two passes]: Lamb's trust ratio is one per parameter, whose elements lie
// in several chunks' shards on several ranks, so its step is two passes over the
// state. The first (lamb_first_pass) goes over every chunk in step order as the step
// does (nvme state read ahead and written back sub-group by sub-group, with the
// gradients), updates m and v, and sums each parameter's p^2 and u^2; one all-reduce
// adds the ranks' sums, and each parameter's ratio follows. The second is the step ops
// as for any optimizer, stepping each piece at its parameter's ratio and reading no
// gradient. nvme state is read twice a step; each pass writes back only what it changed
// (m and v, then the master), so the writes are AdamW's.
// Per-parameter step counts follow torch::optim: a parameter that never had a gradient
// is never stepped, and its elements are never written (Note [step writes only what it
// computed]).
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "engine_core.h"
#include "gatherer.h"
#include "grad_reducer.h"
#include "optim_state.h"
#include "shard_state.h"
#include "staging_cache.h"
#include "strata/engine/loss_scaler.h"
#include "strata/tiers/copy_stream.h"

namespace strata::engine {

class StepDriver {
 public:
  StepDriver(EngineCore& core, const StepKernel& kernel, GradReducer& reducer, OptimStateHolder& holder,
             Gatherer& gatherer);
  ~StepDriver();

  // The wrapped torch::optim optimizer (EngineOptions::wrap), over the master shards.
  Status wrap(const OptimizerFactory& factory);
  LossScaler& scaler() { return scaler_; }
  ParamSteps& param_steps() { return param_steps_; }
  const ParamSteps& param_steps() const { return param_steps_; }
  bool wrapped() const { return wrapped_ != nullptr; }

  Result<double> clip_grad_norm(double max_norm, double norm_type);
  // The boundary micro-step's backward begins: the first nvme sub-groups' state starts
  // coming in (Note [early state reads] in optim_state.h).
  Status read_early();
  // The boundary step; r.boundary is set by the caller.
  Status step(StepResult& r);

 private:
  Result<kernels::GradStats> global_stats(double inv_scale);
  Status run_ops(std::span<const plan::Op> ops, double grad_scale);
  Status read_ahead(std::size_t at);
  std::vector<plan::Op> step_ops() const;
  // The nvme sub-groups of a step, in step order (chunk, sub-group).
  std::vector<std::pair<std::uint32_t, std::uint32_t>> nvme_groups() const;
  Status step_chunk(std::uint32_t c, double grad_scale);
  // Note [Lamb's two passes]: the first pass, which sets lamb_ratios_.
  Status lamb_first_pass(double grad_scale);
  // The current contents of nvme chunk c's parameter shard, into an aligned staging shard.
  Status read_param_shard(std::uint32_t c, const at::Tensor& out);
  StagingCache& param_buffers();  // Note [reused staging], sized at first use
  // Note [gradients kept on compute]: chunk c's gradient shard, copied from compute
  // memory into a reused host buffer (pinned for a GPU).
  Result<StagingCache::Buffer> grad_to_host(std::uint32_t c);
  Status store_param(std::uint32_t c);
  Status flush_param_writes(std::size_t keep = 0);
  Status step_wrapped(double grad_scale);
  bool steps_every_param(std::uint32_t c) const;

  EngineCore& core_;
  const StepKernel& kernel_;
  GradReducer& reducer_;
  OptimStateHolder& holder_;
  Gatherer& gatherer_;
  LossScaler scaler_;
  ParamSteps param_steps_;
  std::optional<kernels::GradStats> stats_;  // the current boundary's, once computed
  std::optional<double> clip_coef_;          // set by clip_grad_norm() for the current boundary
  // The new parameter shard of the chunk just stepped, until its store op.
  struct Staged {
    std::uint32_t chunk = 0;
    at::Tensor values;
    std::vector<ElemRange> stepped;
    StagingCache::Buffer staging;  // its host bytes (and, bound for nvme, its reused buffer)
  };
  std::optional<Staged> staged_;
  // Parameter shards on their way to nvme, oldest first. Members are destroyed in
  // reverse order: the write finishes before the bytes under it go.
  struct ParamWrite {
    StagingCache::Buffer staging;
    io::SwapHandle io;
  };
  static constexpr std::size_t kParamWritesInFlight = 2;
  std::deque<ParamWrite> param_writes_;
  // Note [shards back to the GPU]: new shards on their way from host to a GPU-resident
  // shard, oldest first; each staging shard (and its host bytes) is kept until its copy
  // has ended, at the latest the end of the step.
  struct ShardCopy {
    c10::Event done;
    Staged staged;
  };
  void reap_shard_copies(bool wait);
  tiers::CopyStream copies_;
  std::deque<ShardCopy> shard_copies_;
  StagingCache param_buffers_;
  StagingCache grad_buffers_;  // Note [gradients kept on compute], sized at first use
  // The nvme sub-groups of this step in order (chunk, sub-group); the next one to
  // request, and the next one to step.
  std::vector<std::pair<std::uint32_t, std::uint32_t>> reads_;
  std::size_t next_read_ = 0, next_step_ = 0;
  std::unique_ptr<torch::optim::Optimizer> wrapped_;
  std::vector<double> lamb_ratios_;  // per store parameter, this step's (Lamb only)
  std::vector<std::uint32_t> wrapped_chunks_;   // the chunks whose masters it steps
  std::vector<at::Tensor> wrapped_params_;      // those masters, as its leaves
};

}  // namespace strata::engine
