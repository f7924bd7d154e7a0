// ShardState: one rank's optimizer state for one chunk shard, and the fused step over
// it. Internal to src/engine: the step driver's building blocks.
//
// The state tensors follow torch::optim's names, so consolidation can hand them over:
//   Adam/AdamW: exp_avg, exp_avg_sq (+ max_exp_avg_sq with amsgrad)
//   SGD:        momentum_buffer (only with momentum)
//   Adagrad:    sum
//   Lion:       exp_avg
//   Lamb:       exp_avg, exp_avg_sq (stepped in two passes: lamb_moments_shard, lamb_apply_shard)
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "strata/base/config.h"
#include "strata/base/status.h"
#include "strata/engine/chunk_store.h"
#include "strata/kernels/grad_prologue.h"
#include "strata/kernels/optimizer.h"

namespace strata {
class ThreadPool;
}
namespace strata::comm {
class Communicator;
}

namespace strata::engine {

// The optimizer's hyperparameters in kernel form, built once from the config.
class StepKernel {
 public:
  // state_dtype: the dtype of the state tensors (m, v, ...), fp32 or bf16
  // (EngineOptions::optim_state_dtype); the master is fp32 always.
  static Result<StepKernel> create(const OptimizerConfig& cfg, at::ScalarType state_dtype = at::kFloat);

  OptimizerType type() const { return type_; }
  at::ScalarType state_dtype() const { return state_dtype_; }
  // torch::optim's names of the per-parameter state tensors, in a fixed order.
  const std::vector<std::string>& state_names() const { return names_; }
  // The value a fresh state tensor starts at (Adagrad: initial_accumulator_value).
  double initial_value(std::size_t state) const;
  double lr() const;
  void set_lr(double lr);
  // The optimizer's weight decay: a group's unless it has its own.
  double weight_decay() const;
  // Adam's, Lion's or Lamb's betas (a OneCycle schedule cycles beta1); SGD and Adagrad ignore them.
  std::array<double, 2> betas() const;
  void set_betas(std::array<double, 2> betas);
  // SGD's momentum; the other optimizers ignore it.
  double momentum() const { return sgd_.momentum; }
  void set_momentum(double momentum) { sgd_.momentum = momentum; }

  // Note [parameter groups] (engine_options.h): group g steps with lr() * lr_scale and,
  // when set, its own weight decay. Without set_groups there is one group, 0, of every
  // parameter, at scale 1.
  struct Group {
    double lr_scale = 1.0;
    std::optional<double> weight_decay;
  };
  // group_of: per store parameter (ChunkStore::params() order).
  void set_groups(std::vector<Group> groups, std::vector<std::uint32_t> group_of);
  std::uint32_t group_of(std::size_t store_param) const {
    return group_of_.empty() ? 0 : group_of_[store_param];
  }
  std::size_t n_groups() const { return groups_.size(); }
  const Group& group(std::size_t g) const { return groups_[g]; }
  void set_lr_scale(std::size_t g, double scale) { groups_[g].lr_scale = scale; }
  void set_weight_decay(std::size_t g, double decay) { groups_[g].weight_decay = decay; }

  // One fused step over n elements of parameters of group `group`: master (fp32) and
  // states (state_dtype()) updated in place; param (compute dtype) written from the new
  // master when not null. Not for Lamb, whose step is two passes (below).
  Status run(std::int64_t n, float* master, std::vector<void*> states, const void* grad, kernels::DType grad_dtype,
             void* param, kernels::DType param_dtype, const kernels::StepInfo& info, ThreadPool* pool,
             std::uint32_t group = 0) const;
  // The same step as ATen tensor ops, on tensors of any one device (tensor_step.cpp): for
  // state the CPU kernels cannot reach, a GPU's. master fp32; states fp32 or bf16; grad
  // any float dtype; param (the compute copy, written from the new master) may be
  // undefined. All of one length.
  Status run_tensors(const at::Tensor& master, const std::vector<at::Tensor>& states, const at::Tensor& grad,
                     const at::Tensor& param, const kernels::StepInfo& info, std::uint32_t group = 0) const;

  // Lamb's two passes (kernels/optimizer.h) over n elements of one parameter: the first
  // updates m and v and returns the sums of p^2 and u^2; the second steps the master at
  // the parameter's trust ratio and writes param when not null (or, as tensors, defined).
  Result<kernels::LambSums> lamb_moments(std::int64_t n, float* master, std::vector<void*> states, const void* grad,
                                         kernels::DType grad_dtype, const kernels::StepInfo& info, ThreadPool* pool,
                                         std::uint32_t group = 0) const;
  Status lamb_apply(std::int64_t n, float* master, std::vector<void*> states, void* param, kernels::DType param_dtype,
                    const kernels::StepInfo& info, double ratio, ThreadPool* pool, std::uint32_t group = 0) const;
  // The tensor form leaves the sums on the master's device, {p_sq, u_sq} in double (see
  // LambNorms): no copy to the host per piece.
  Result<at::Tensor> lamb_moments_tensors(const at::Tensor& master, const std::vector<at::Tensor>& states,
                                          const at::Tensor& grad, const kernels::StepInfo& info,
                                          std::uint32_t group = 0) const;
  Status lamb_apply_tensors(const at::Tensor& master, const std::vector<at::Tensor>& states, const at::Tensor& param,
                            const kernels::StepInfo& info, double ratio, std::uint32_t group = 0) const;
  // The trust ratio of a parameter of group `group` from its whole sums.
  double lamb_ratio(const kernels::LambSums& whole, std::uint32_t group = 0) const;

 private:
  // The hyperparameters of group g: the optimizer's, with its lr scaled and its decay.
  template <typename Hyper>
  Hyper for_group(Hyper h, std::uint32_t g) const {
    h.lr *= groups_[g].lr_scale;
    if (groups_[g].weight_decay) h.weight_decay = *groups_[g].weight_decay;
    return h;
  }

  OptimizerType type_ = OptimizerType::kAdamW;
  std::vector<std::string> names_;
  kernels::AdamHyper adam_;
  kernels::SgdHyper sgd_;
  kernels::AdagradHyper adagrad_;
  kernels::LionHyper lion_;
  kernels::LambHyper lamb_;
  double initial_accumulator_ = 0;
  at::ScalarType state_dtype_ = at::kFloat;
  std::vector<Group> groups_{Group{}};
  std::vector<std::uint32_t> group_of_;  // empty: every parameter in group 0
};

struct ShardState {
  at::Tensor master;               // fp32 [n]
  std::vector<at::Tensor> states;  // [n] each, StepKernel::state_names() order, state_dtype()

  // Master zeroed, states at their initial values.
  static ShardState make(std::int64_t n, const StepKernel& kernel);
  // The same tensors, uninitialized: for state about to be read in from a swap record.
  static ShardState uninitialized(std::int64_t n, const StepKernel& kernel);
  std::uint64_t bytes() const;
  // The same values on `device`: the tensors themselves when they are there already.
  ShardState to(c10::Device device) const;
};

// Note [optimizer sub-groups]: nvme optimizer state (and an nvme gradient shard) is kept
// and stepped in sub-groups of at most zero_optimization.sub_group_size elements, one
// record per tensor per sub-group, so the step's staging buffers are bounded by the
// sub-group and not by the chunk. A sub-group's length is a multiple of 1024 elements
// (4 KiB of fp32) except the chunk's last, so every sub-group of an aligned shard starts
// on a 4 KiB boundary and moves in place.
// [begin, end) elements of a shard: a sub-group, or a run one kernel call stepped.
struct ElemRange {
  std::int64_t begin = 0, end = 0;
  std::int64_t size() const { return end - begin; }
};
// The sub-groups of an n-element shard, for sub_group_elems (already a multiple of 1024).
std::vector<ElemRange> sub_groups(std::int64_t n, std::int64_t sub_group_elems);

// Per-parameter bookkeeping the engine keeps identical on every rank: torch::optim's
// state.step, and whether the parameter has ever had a gradient (torch::optim never
// steps a parameter that has not).
struct ParamSteps {
  std::vector<std::int64_t> steps;
  std::vector<std::uint8_t> ever_had_grad;

  explicit ParamSteps(std::size_t n = 0) : steps(n, 0), ever_had_grad(n, 0) {}
  // ORs this rank's "had a gradient" flags into ever_had_grad across ranks (skipped,
  // on every rank alike, once all are set).
  Status sync(const std::vector<std::uint8_t>& local, comm::Communicator& comm);
  // After a step: every parameter that has had a gradient advanced by one.
  void advance();
};


// One step over elements `range` of a chunk shard: parameters that have had a gradient
// are stepped in runs of adjacent parameters at the same step count (each run one
// kernel call); others are skipped, as torch::optim skips them, and their elements are
// never written. state's tensors and grad start at range.begin, param (the shard in the
// compute dtype, or undefined: Note [shard from master]) at the shard's first element.
// `tensor_ops` picks StepKernel::run_tensors over the fused kernels; state off the CPU
// always takes it. The runs stepped are appended to *stepped when it is not null: a
// caller that steps into a staging buffer copies only those elements home (Note [step
// writes only what it computed]).
Status step_shard(const StepKernel& kernel, ShardState& state, const std::vector<ChunkStore::ShardSlot>& slots,
                  const ParamSteps& params, const at::Tensor& grad, const at::Tensor& param, double grad_scale,
                  bool tensor_ops, ThreadPool* pool, std::vector<ElemRange>* stepped, ElemRange range);

// Note [Lamb's two passes] (step_driver.h): every parameter's sums over its pieces, in
// store order. Pieces stepped as tensor ops (state on a GPU) leave theirs on their
// device, and settle() brings each device's over in one copy, as Note [one copy for the
// gradient norm] does for the gradient partials: a copy per piece would make the
// host wait for the device once per parameter.
class LambNorms {
 public:
  explicit LambNorms(std::size_t n_params) : sums_(n_params) {}
  void add(std::size_t param, const kernels::LambSums& piece) { sums_[param].merge(piece); }
  void add(std::size_t param, at::Tensor on_device) { pending_.emplace_back(param, std::move(on_device)); }
  // This rank's sums, with every pending piece added.
  std::vector<kernels::LambSums>& settle();

 private:
  std::vector<kernels::LambSums> sums_;
  std::vector<std::pair<std::size_t, at::Tensor>> pending_;  // {p_sq, u_sq} on a device
};

// Lamb's two passes over elements `range` of a chunk shard (kernels/optimizer.h), one
// kernel call per stepped parameter's piece, skipping what step_shard skips. The first
// updates m and v and adds each piece's sums into `norms`; the caller adds them across
// ranks into ratios[param] (store order) for the second, which steps the master and
// writes param as step_shard does.
Status lamb_moments_shard(const StepKernel& kernel, ShardState& state, const std::vector<ChunkStore::ShardSlot>& slots,
                          const ParamSteps& params, const at::Tensor& grad, double grad_scale, bool tensor_ops,
                          ThreadPool* pool, ElemRange range, LambNorms& norms);
Status lamb_apply_shard(const StepKernel& kernel, ShardState& state, const std::vector<ChunkStore::ShardSlot>& slots,
                        const ParamSteps& params, const at::Tensor& param, bool tensor_ops, ThreadPool* pool,
                        std::vector<ElemRange>* stepped, ElemRange range, const std::vector<double>& ratios);

// The gradient prologue (kernels/grad_prologue.h) as tensor ops, for a gradient shard
// on a GPU (or anywhere), in two halves. Note [one copy for the gradient norm]: the
// step needs every shard's figures before it may start (the overflow check, clipping),
// and a copy to the host waits for the device; one copy a shard made the step wait for
// the GPU once per chunk. So each shard's partials stay on its device, and one copy
// brings all of them over.
//
// A shard's partials {l1, l2_sq, linf} as a double tensor on its device, unscaled, sums
// in double: no copy to the host.
at::Tensor tensor_grad_partials(const at::Tensor& grad);
// Partials of any number of shards on one device, stacked as rows ([n, 3]): summed (linf
// maxed) there, copied to the host once, scaled by inv_scale.
kernels::GradStats merge_grad_partials(const at::Tensor& rows, double inv_scale);
// Both, for one shard.
kernels::GradStats tensor_grad_stats(const at::Tensor& grad, double inv_scale);

// Sums L1/L2 partials and maxes linf/nonfinite across ranks.
Result<kernels::GradStats> all_reduce_stats(const kernels::GradStats& local, comm::Communicator& comm);

}  // namespace strata::engine
