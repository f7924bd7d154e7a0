// Lion as a torch::optim optimizer. LibTorch has none; this is the form in which
// Engine::consolidate_state_dict hands a Lion engine's state over (per-parameter
// exp_avg and step, as DeepSpeed's CPU Lion keeps them) and load_state_dict takes it.
//
//   auto full = engine.consolidate_state_dict(0);           // a strata::engine::Lion
//   auto& st = static_cast<strata::engine::LionParamState&>(*full->state().begin()->second);
//
// It also steps on its own, in ATen ops (the formula of kernels/optimizer.h: decoupled
// weight decay, p -= lr * sign(b1*m + (1-b1)*g), m = b2*m + (1-b2)*g), so a consolidated
// optimizer can go on training outside the engine.
#pragma once

#include <cstdint>
#include <tuple>
#include <vector>

#include <torch/arg.h>
#include <torch/optim/optimizer.h>

namespace strata::engine {

struct LionOptions : torch::optim::OptimizerCloneableOptions<LionOptions> {
  using Betas = std::tuple<double, double>;
  LionOptions(double lr = 1e-4);  // NOLINT(google-explicit-constructor): as torch's options
  TORCH_ARG(double, lr) = 1e-4;
  TORCH_ARG(Betas, betas) = std::make_tuple(0.9, 0.99);
  TORCH_ARG(double, weight_decay) = 0;

 public:  // TORCH_ARG leaves its members private
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  double get_lr() const override { return lr(); }
  void set_lr(const double lr) override { this->lr(lr); }
};

struct LionParamState : torch::optim::OptimizerCloneableParamState<LionParamState> {
  TORCH_ARG(at::Tensor, exp_avg);
  TORCH_ARG(std::int64_t, step) = 0;

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};

// One Lion step in ATen ops on tensors of any one device: p (fp32) and m updated in
// place from the gradient g. Lion::step and the engine's tensor-op step
// (StepKernel::run_tensors) both run it.
void lion_update(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m, double lr, double beta1, double beta2,
                 double weight_decay);

class Lion : public torch::optim::Optimizer {
 public:
  // Checks the options as the engine's kernel does (lr, weight_decay >= 0; betas in [0, 1]).
  explicit Lion(std::vector<torch::optim::OptimizerParamGroup> groups, LionOptions defaults = {});
  explicit Lion(std::vector<at::Tensor> params, LionOptions defaults = {});

  at::Tensor step(LossClosure closure = nullptr) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;
};

}  // namespace strata::engine
