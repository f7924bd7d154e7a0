// Lamb as a torch::optim optimizer. LibTorch has none; this is the form in which
// Engine::consolidate_state_dict hands a Lamb engine's state over (per-parameter
// exp_avg, exp_avg_sq and step, as DeepSpeed's FusedLamb keeps them) and
// load_state_dict takes it.
//
// It also steps on its own, in ATen ops, with the formula of kernels/optimizer.h
// (DeepSpeed's FusedLamb: one trust ratio per parameter tensor, clamped to
// [min_coeff, max_coeff]), so a consolidated optimizer can go on training outside the
// engine. The engine's tensor-op step (StepKernel::lamb_*_tensors) runs the same two
// halves, lamb_moments_update and lamb_direction.
#pragma once

#include <cstdint>
#include <tuple>
#include <vector>

#include <torch/arg.h>
#include <torch/optim/optimizer.h>

namespace strata::engine {

struct LambOptions : torch::optim::OptimizerCloneableOptions<LambOptions> {
  using Betas = std::tuple<double, double>;
  LambOptions(double lr = 1e-3);  // NOLINT(google-explicit-constructor): as torch's options
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(Betas, betas) = std::make_tuple(0.9, 0.999);
  TORCH_ARG(double, eps) = 1e-8;
  TORCH_ARG(double, weight_decay) = 0;
  TORCH_ARG(double, max_coeff) = 10.0;
  TORCH_ARG(double, min_coeff) = 0.01;
  TORCH_ARG(bool, bias_correction) = true;

 public:  // TORCH_ARG leaves its members private
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  double get_lr() const override { return lr(); }
  void set_lr(const double lr) override { this->lr(lr); }
};

struct LambParamState : torch::optim::OptimizerCloneableParamState<LambParamState> {
  TORCH_ARG(std::int64_t, step) = 0;
  TORCH_ARG(at::Tensor, exp_avg);
  TORCH_ARG(at::Tensor, exp_avg_sq);

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};

// m = b1*m + (1-b1)*g; v = b2*v + ((1-b2)*g)*g, in place (fp32 tensors of one device).
void lamb_moments_update(const at::Tensor& g, const at::Tensor& m, const at::Tensor& v, double beta1, double beta2);
// u = m / (sqrt(v) + eps) + weight_decay * p, a new fp32 tensor.
at::Tensor lamb_direction(const at::Tensor& m, const at::Tensor& v, const at::Tensor& p, double eps,
                          double weight_decay);
// sum(t^2) as a 0-d double tensor on t's device, accumulated in double.
at::Tensor squared_norm(const at::Tensor& t);
// lr * sqrt(1 - beta2^step) / (1 - beta1^step), or lr without bias correction.
double lamb_step_size(double lr, double beta1, double beta2, std::int64_t step, bool bias_correction);

class Lamb : public torch::optim::Optimizer {
 public:
  // Checks the options as the engine's kernel does (lr, weight_decay, min_coeff >= 0;
  // eps > 0; betas in [0, 1); min_coeff <= max_coeff).
  explicit Lamb(std::vector<torch::optim::OptimizerParamGroup> groups, LambOptions defaults = {});
  explicit Lamb(std::vector<at::Tensor> params, LambOptions defaults = {});

  at::Tensor step(LossClosure closure = nullptr) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;
};

}  // namespace strata::engine
