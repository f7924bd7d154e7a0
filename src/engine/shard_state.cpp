#include "shard_state.h"

#include <ATen/ATen.h>

namespace strata::engine {

Result<StepKernel> StepKernel::create(const OptimizerConfig& cfg) {
  StepKernel k;
  k.type_ = cfg.effective_type();
  switch (k.type_) {
    case OptimizerType::kAdam:
    case OptimizerType::kAdamW:
      k.adam_ = {.lr = cfg.lr, .beta1 = cfg.betas[0], .beta2 = cfg.betas[1], .eps = cfg.eps,
                 .weight_decay = cfg.weight_decay, .decoupled_weight_decay = k.type_ == OptimizerType::kAdamW,
                 .amsgrad = cfg.amsgrad};
      k.names_ = {"exp_avg", "exp_avg_sq"};
      if (cfg.amsgrad) k.names_.push_back("max_exp_avg_sq");
      break;
    case OptimizerType::kSGD:
      if (cfg.nesterov && (cfg.momentum <= 0 || cfg.dampening != 0)) {
        return make_error(ErrorCode::kInvalidArgument, "optimizer: nesterov needs momentum > 0 and dampening 0");
      }
      k.sgd_ = {.lr = cfg.lr, .momentum = cfg.momentum, .dampening = cfg.dampening,
                .weight_decay = cfg.weight_decay, .nesterov = cfg.nesterov};
      if (cfg.momentum != 0) k.names_ = {"momentum_buffer"};
      break;
    case OptimizerType::kAdagrad:
      k.adagrad_ = {.lr = cfg.lr, .lr_decay = cfg.lr_decay, .weight_decay = cfg.weight_decay, .eps = cfg.eps};
      k.initial_accumulator_ = cfg.initial_accumulator_value;
      k.names_ = {"sum"};
      break;
  }
  return k;
}

double StepKernel::initial_value(std::size_t) const {
  return type_ == OptimizerType::kAdagrad ? initial_accumulator_ : 0.0;
}

double StepKernel::lr() const {
  switch (type_) {
    case OptimizerType::kSGD: return sgd_.lr;
    case OptimizerType::kAdagrad: return adagrad_.lr;
    default: return adam_.lr;
  }
}

void StepKernel::set_lr(double lr) { adam_.lr = sgd_.lr = adagrad_.lr = lr; }

Status StepKernel::run(std::int64_t n, float* master, std::vector<void*> states, const void* grad,
                       kernels::DType grad_dtype, void* param, kernels::DType param_dtype,
                       const kernels::StepInfo& info, ThreadPool* pool) const {
  kernels::StepShard shard{.n = static_cast<std::size_t>(n), .master = master, .grad = grad, .grad_dtype = grad_dtype,
                           .param = param, .param_dtype = param_dtype, .state_dtype = kernels::DType::kF32};
  switch (type_) {
    case OptimizerType::kAdam:
    case OptimizerType::kAdamW: {
      kernels::AdamState s{.exp_avg = states[0], .exp_avg_sq = states[1],
                           .max_exp_avg_sq = states.size() > 2 ? states[2] : nullptr};
      return kernels::adam_step(shard, s, adam_, info, pool);
    }
    case OptimizerType::kSGD:
      return kernels::sgd_step(shard, states.empty() ? nullptr : states[0], sgd_, info, pool);
    case OptimizerType::kAdagrad:
      return kernels::adagrad_step(shard, states[0], adagrad_, info, pool);
  }
  return make_error(ErrorCode::kInternal, "unknown optimizer type");
}

ShardState ShardState::make(std::int64_t n, const StepKernel& kernel) {
  ShardState s;
  s.master = at::zeros({n}, at::kFloat);
  for (std::size_t i = 0; i < kernel.state_names().size(); ++i) {
    s.states.push_back(at::full({n}, kernel.initial_value(i), at::kFloat));
  }
  return s;
}

std::uint64_t ShardState::bytes() const {
  std::uint64_t b = master.numel() * 4;
  for (const auto& t : states) b += t.numel() * 4;
  return b;
}

}  // namespace strata::engine
