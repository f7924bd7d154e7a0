#include "strata/engine/lamb.h"

#include <cmath>

#include <ATen/ATen.h>
#include <torch/optim/serialize.h>
#include <torch/serialize/archive.h>

#include "strata/comm/torch_compat.h"
#include "strata/kernels/optimizer.h"

namespace strata::engine {

LambOptions::LambOptions(double lr) : lr_(lr) {}

void LambOptions::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(lr);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(betas);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(eps);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(weight_decay);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(max_coeff);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(min_coeff);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(bias_correction);
}

void LambOptions::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, lr);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(Betas, betas);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, eps);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, weight_decay);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, max_coeff);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, min_coeff);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(bool, bias_correction);
}

void LambParamState::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(step);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(exp_avg);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(exp_avg_sq);
}

void LambParamState::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(std::int64_t, step);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(at::Tensor, exp_avg);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(at::Tensor, exp_avg_sq);
}

void lamb_moments_update(const at::Tensor& g, const at::Tensor& m, const at::Tensor& v, double beta1, double beta2) {
  m.mul_(beta1).add_(g, 1 - beta1);
  v.mul_(beta2).add_(g * (1 - beta2) * g);
}

at::Tensor lamb_direction(const at::Tensor& m, const at::Tensor& v, const at::Tensor& p, double eps,
                          double weight_decay) {
  at::Tensor u = m / v.sqrt().add_(eps);
  if (weight_decay != 0) u.add_(p, weight_decay);
  return u;
}

at::Tensor squared_norm(const at::Tensor& t) {
  // Accumulated in double without a double copy of t.
  return at::linalg_vector_norm(t, 2, c10::nullopt, false, at::kDouble).square();
}

double lamb_step_size(double lr, double beta1, double beta2, std::int64_t step, bool bias_correction) {
  if (!bias_correction) return lr;
  const double t = static_cast<double>(step);
  return lr * std::sqrt(1 - std::pow(beta2, t)) / (1 - std::pow(beta1, t));
}

Lamb::Lamb(std::vector<torch::optim::OptimizerParamGroup> groups, LambOptions defaults)
    : Optimizer(std::move(groups), std::make_unique<LambOptions>(defaults)) {
  const auto [b1, b2] = defaults.betas();
  TORCH_CHECK(defaults.lr() >= 0, "Invalid learning rate: ", defaults.lr());
  TORCH_CHECK(defaults.eps() > 0, "Invalid epsilon value: ", defaults.eps(), " (Lamb needs eps > 0)");
  TORCH_CHECK(b1 >= 0 && b1 < 1 && b2 >= 0 && b2 < 1, "Invalid betas: (", b1, ", ", b2, "), each must be in [0, 1)");
  TORCH_CHECK(defaults.weight_decay() >= 0, "Invalid weight_decay value: ", defaults.weight_decay());
  TORCH_CHECK(defaults.min_coeff() >= 0 && defaults.min_coeff() <= defaults.max_coeff(), "Invalid min_coeff ",
              defaults.min_coeff(), " / max_coeff ", defaults.max_coeff());
}

Lamb::Lamb(std::vector<at::Tensor> params, LambOptions defaults)
    : Lamb(std::vector<torch::optim::OptimizerParamGroup>{torch::optim::OptimizerParamGroup(std::move(params))},
           std::move(defaults)) {}

at::Tensor Lamb::step(LossClosure closure) {
  at::NoGradGuard no_grad;
  at::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (auto& group : param_groups_) {
    const auto& o = static_cast<const LambOptions&>(group.options());
    const auto [b1, b2] = o.betas();
    const kernels::LambHyper h{.lr = o.lr(), .beta1 = b1, .beta2 = b2, .eps = o.eps(), .weight_decay = o.weight_decay(),
                               .max_coeff = o.max_coeff(), .min_coeff = o.min_coeff(),
                               .bias_correction = o.bias_correction()};
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      auto& slot = state_[torch_compat::optim_state_key(p)];
      if (!slot) {
        auto fresh = std::make_unique<LambParamState>();
        fresh->exp_avg(at::zeros_like(p, at::MemoryFormat::Preserve));
        fresh->exp_avg_sq(at::zeros_like(p, at::MemoryFormat::Preserve));
        slot = std::move(fresh);
      }
      auto& st = static_cast<LambParamState&>(*slot);
      st.step(st.step() + 1);
      lamb_moments_update(p.grad(), st.exp_avg(), st.exp_avg_sq(), b1, b2);
      const at::Tensor u = lamb_direction(st.exp_avg(), st.exp_avg_sq(), p, o.eps(), o.weight_decay());
      const kernels::LambSums sums{.p_sq = squared_norm(p).item<double>(), .u_sq = squared_norm(u).item<double>()};
      p.add_(u, -lamb_step_size(o.lr(), b1, b2, st.step(), o.bias_correction()) * kernels::lamb_ratio(sums, h));
    }
  }
  return loss;
}

void Lamb::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<LambParamState, LambOptions>(archive, *this);
}

void Lamb::load(torch::serialize::InputArchive& archive) {
  torch::optim::serialize<LambParamState, LambOptions>(archive, *this);
}

}  // namespace strata::engine
