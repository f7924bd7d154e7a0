// ShardState: one rank's optimizer state for one chunk shard, and the fused step over
// it. Internal to src/engine; shared by the ZeRO-1/2 optimizer and the ZeRO-3 engine.
//
// The state tensors follow torch::optim's names, so consolidation can hand them over:
//   Adam/AdamW: exp_avg, exp_avg_sq (+ max_exp_avg_sq with amsgrad)
//   SGD:        momentum_buffer (only with momentum)
//   Adagrad:    sum
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "strata/base/config.h"
#include "strata/base/status.h"
#include "strata/kernels/optimizer.h"

namespace strata {
class ThreadPool;
}

namespace strata::engine {

// The optimizer's hyperparameters in kernel form, built once from the config.
class StepKernel {
 public:
  static Result<StepKernel> create(const OptimizerConfig& cfg);

  OptimizerType type() const { return type_; }
  // torch::optim's names of the per-parameter state tensors, in a fixed order.
  const std::vector<std::string>& state_names() const { return names_; }
  // The value a fresh state tensor starts at (Adagrad: initial_accumulator_value).
  double initial_value(std::size_t state) const;
  double lr() const;
  void set_lr(double lr);

  // One fused step over n elements: master (fp32) and states (fp32) updated in place;
  // param (compute dtype) written from the new master when not null.
  Status run(std::int64_t n, float* master, std::vector<void*> states, const void* grad, kernels::DType grad_dtype,
             void* param, kernels::DType param_dtype, const kernels::StepInfo& info, ThreadPool* pool) const;

 private:
  OptimizerType type_ = OptimizerType::kAdamW;
  std::vector<std::string> names_;
  kernels::AdamHyper adam_;
  kernels::SgdHyper sgd_;
  kernels::AdagradHyper adagrad_;
  double initial_accumulator_ = 0;
};

struct ShardState {
  at::Tensor master;               // fp32 [n]
  std::vector<at::Tensor> states;  // fp32 [n] each, StepKernel::state_names() order

  static ShardState make(std::int64_t n, const StepKernel& kernel);
  std::uint64_t bytes() const;
};

}  // namespace strata::engine
