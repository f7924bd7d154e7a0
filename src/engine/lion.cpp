#include "strata/engine/lion.h"

#include <torch/optim/serialize.h>
#include <torch/serialize/archive.h>

#include "strata/comm/torch_compat.h"

namespace strata::engine {

LionOptions::LionOptions(double lr) : lr_(lr) {}

void LionOptions::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(lr);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(betas);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(weight_decay);
}

void LionOptions::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, lr);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(Betas, betas);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, weight_decay);
}

void LionParamState::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(step);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(exp_avg);
}

void LionParamState::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(std::int64_t, step);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(at::Tensor, exp_avg);
}

void lion_update(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m, double lr, double beta1, double beta2,
                 double weight_decay) {
  if (weight_decay != 0) p.mul_(1 - lr * weight_decay);
  p.add_((m * beta1 + g * (1 - beta1)).sign_(), -lr);
  m.mul_(beta2).add_(g, 1 - beta2);
}

Lion::Lion(std::vector<torch::optim::OptimizerParamGroup> groups, LionOptions defaults)
    : Optimizer(std::move(groups), std::make_unique<LionOptions>(defaults)) {
  const auto [b1, b2] = defaults.betas();
  TORCH_CHECK(defaults.lr() >= 0, "Invalid learning rate: ", defaults.lr());
  TORCH_CHECK(b1 >= 0 && b1 <= 1 && b2 >= 0 && b2 <= 1, "Invalid betas: (", b1, ", ", b2, "), each must be in [0, 1]");
  TORCH_CHECK(defaults.weight_decay() >= 0, "Invalid weight_decay value: ", defaults.weight_decay());
}

Lion::Lion(std::vector<at::Tensor> params, LionOptions defaults)
    : Lion(std::vector<torch::optim::OptimizerParamGroup>{torch::optim::OptimizerParamGroup(std::move(params))},
           std::move(defaults)) {}

at::Tensor Lion::step(LossClosure closure) {
  at::NoGradGuard no_grad;
  at::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (auto& group : param_groups_) {
    const auto& o = static_cast<const LionOptions&>(group.options());
    const auto [b1, b2] = o.betas();
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      auto& slot = state_[torch_compat::optim_state_key(p)];
      if (!slot) {
        auto fresh = std::make_unique<LionParamState>();
        fresh->exp_avg(at::zeros_like(p, at::MemoryFormat::Preserve));
        slot = std::move(fresh);
      }
      auto& st = static_cast<LionParamState&>(*slot);
      st.step(st.step() + 1);
      lion_update(p, p.grad(), st.exp_avg(), o.lr(), b1, b2, o.weight_decay());
    }
  }
  return loss;
}

void Lion::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<LionParamState, LionOptions>(archive, *this);
}

void Lion::load(torch::serialize::InputArchive& archive) {
  torch::optim::serialize<LionParamState, LionOptions>(archive, *this);
}

}  // namespace strata::engine
