// Engine: the optimizer's hyperparameters as the front ends read and set them between
// steps (a torch scheduler's lrs per group, weight decays, OneCycle's betas or momentum).
// Each setter validates first and changes nothing on a bad value.
#include <algorithm>
#include <cmath>

#include "engine_impl.h"
#include "strata/engine/engine.h"

namespace strata::engine {

double Engine::lr() const { return impl_->kernel.lr(); }
void Engine::set_lr(double lr) { impl_->kernel.set_lr(lr); }
std::size_t Engine::n_param_groups() const { return impl_->kernel.n_groups(); }
double Engine::lr_scale(std::size_t group) const {
  return group < impl_->kernel.n_groups() ? impl_->kernel.group(group).lr_scale : 0.0;
}
Status Engine::set_lr_scale(std::size_t group, double scale) {
  if (group >= impl_->kernel.n_groups()) {
    return make_error(ErrorCode::kOutOfRange, "set_lr_scale: no parameter group {} (there are {})", group,
                      impl_->kernel.n_groups());
  }
  if (!std::isfinite(scale) || scale < 0) {
    return make_error(ErrorCode::kInvalidArgument, "set_lr_scale: the scale must be finite and >= 0, got {}", scale);
  }
  impl_->kernel.set_lr_scale(group, scale);
  return ok();
}
std::vector<double> Engine::group_lrs() const {
  std::vector<double> out;
  for (std::size_t g = 0; g < impl_->kernel.n_groups(); ++g) out.push_back(lr() * impl_->kernel.group(g).lr_scale);
  return out;
}
Status Engine::set_group_lrs(const std::vector<double>& lrs) {
  if (lrs.size() != impl_->kernel.n_groups()) {
    return make_error(ErrorCode::kInvalidArgument, "set_group_lrs: {} lrs given, the engine has {} parameter group(s)",
                      lrs.size(), impl_->kernel.n_groups());
  }
  for (std::size_t g = 0; g < lrs.size(); ++g) {
    if (!std::isfinite(lrs[g]) || lrs[g] < 0) {
      return make_error(ErrorCode::kInvalidArgument, "set_group_lrs: parameter group {}: the lr must be finite and "
                        ">= 0, got {}", g, lrs[g]);
    }
  }
  const double top = *std::max_element(lrs.begin(), lrs.end());
  impl_->kernel.set_lr(top);
  if (top > 0)  // all zero keeps the scales: lr() * scale is 0 for each either way
    for (std::size_t g = 0; g < lrs.size(); ++g) impl_->kernel.set_lr_scale(g, lrs[g] / top);
  return ok();
}
std::vector<double> Engine::group_weight_decays() const {
  std::vector<double> out;
  for (std::size_t g = 0; g < impl_->kernel.n_groups(); ++g)
    out.push_back(impl_->kernel.group(g).weight_decay.value_or(impl_->kernel.weight_decay()));
  return out;
}
Status Engine::set_group_weight_decays(const std::vector<double>& decays) {
  if (decays.size() != impl_->kernel.n_groups()) {
    return make_error(ErrorCode::kInvalidArgument, "set_group_weight_decays: {} given, the engine has {} parameter "
                      "group(s)", decays.size(), impl_->kernel.n_groups());
  }
  for (std::size_t g = 0; g < decays.size(); ++g) {
    if (!std::isfinite(decays[g]) || decays[g] < 0) {
      return make_error(ErrorCode::kInvalidArgument, "set_group_weight_decays: parameter group {}: the weight decay "
                        "must be finite and >= 0, got {}", g, decays[g]);
    }
  }
  for (std::size_t g = 0; g < decays.size(); ++g) impl_->kernel.set_weight_decay(g, decays[g]);
  return ok();
}
std::optional<std::array<double, 2>> Engine::betas() const {
  const OptimizerType t = impl_->kernel.type();
  if (t != OptimizerType::kAdam && t != OptimizerType::kAdamW && t != OptimizerType::kLion && t != OptimizerType::kLamb)
    return std::nullopt;
  return impl_->kernel.betas();
}
Status Engine::set_betas(std::array<double, 2> betas) {
  if (!this->betas()) {
    return make_error(ErrorCode::kInvalidArgument, "set_betas: {} has no betas", to_string(impl_->kernel.type()));
  }
  for (double b : betas) {
    if (!(b >= 0 && b < 1)) return make_error(ErrorCode::kInvalidArgument, "set_betas: betas must be in [0, 1), got {}", b);
  }
  impl_->kernel.set_betas(betas);
  return ok();
}
std::optional<double> Engine::momentum() const {
  if (impl_->kernel.type() != OptimizerType::kSGD) return std::nullopt;
  return impl_->kernel.momentum();
}
Status Engine::set_momentum(double momentum) {
  const auto now = this->momentum();
  if (!now) {
    return make_error(ErrorCode::kInvalidArgument, "set_momentum: {} has no momentum", to_string(impl_->kernel.type()));
  }
  if (*now == 0) {
    return make_error(ErrorCode::kInvalidArgument, "set_momentum: this SGD was built with momentum 0 and keeps no "
                      "momentum buffers; build it with momentum > 0 to change it later");
  }
  if (!std::isfinite(momentum) || momentum <= 0) {
    return make_error(ErrorCode::kInvalidArgument, "set_momentum: momentum must be finite and > 0, got {}", momentum);
  }
  impl_->kernel.set_momentum(momentum);
  return ok();
}

}  // namespace strata::engine
