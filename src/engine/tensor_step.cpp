// StepKernel::run_tensors: the optimizer step as ATen tensor ops, for state on a device
// the fused CPU kernels cannot reach (a GPU). The formulas and their order are
// kernels/optimizer.h's (LibTorch 1.13's torch::optim; Lion's paper; DeepSpeed's Lamb), in fp32: bf16 states are widened
// for the arithmetic and rounded (RNE) when stored back, as the kernels do. ATen may fuse
// a multiply and an add where the kernels do not, so the two agree to rounding (~1e-7
// relative), not bit for bit.
#include <cmath>

#include <ATen/ATen.h>

#include "shard_state.h"
#include "strata/engine/lamb.h"
#include "strata/engine/lion.h"

namespace strata::engine {
namespace {

// An fp32 tensor to compute in: t itself, or a widened copy that store() writes back.
at::Tensor wide(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }
void store(const at::Tensor& dst, const at::Tensor& value) {
  if (!dst.is_same(value)) dst.copy_(value);
}

void adam(const kernels::AdamHyper& h, const kernels::StepInfo& info, const at::Tensor& p, const at::Tensor& g,
          const std::vector<at::Tensor>& states) {
  at::Tensor m = wide(states[0]), v = wide(states[1]);
  const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(info.step));
  const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(info.step));
  if (h.weight_decay != 0) {
    if (h.decoupled_weight_decay) p.mul_(1.0 - h.lr * h.weight_decay);
    else g.add_(p, h.weight_decay);
  }
  m.mul_(h.beta1).add_(g, 1.0 - h.beta1);
  v.mul_(h.beta2).add_(g * (1.0 - h.beta2) * g);
  at::Tensor second = v;
  if (h.amsgrad) {
    at::Tensor vmax = wide(states[2]);
    at::maximum_out(vmax, vmax, v);
    store(states[2], vmax);
    second = vmax;
  }
  const at::Tensor denom = (second.sqrt() / std::sqrt(bc2)).add_(h.eps);
  p.add_((m * (-h.lr / bc1)) / denom);
  store(states[0], m);
  store(states[1], v);
}

void sgd(const kernels::SgdHyper& h, const kernels::StepInfo& info, const at::Tensor& p, at::Tensor g,
         const std::vector<at::Tensor>& states) {
  if (h.weight_decay != 0) g.add_(p, h.weight_decay);
  if (h.momentum != 0) {
    at::Tensor buf = wide(states[0]);
    if (info.step == 1) buf.copy_(g);
    else buf.mul_(h.momentum).add_(g, 1.0 - h.dampening);
    store(states[0], buf);
    g = h.nesterov ? g.add_(buf, h.momentum) : buf;
  }
  p.add_(g, -h.lr);
}

void adagrad(const kernels::AdagradHyper& h, const kernels::StepInfo& info, const at::Tensor& p, const at::Tensor& g,
             const std::vector<at::Tensor>& states) {
  at::Tensor sum = wide(states[0]);
  if (h.weight_decay != 0) g.add_(p, h.weight_decay);
  const double clr = h.lr / (1.0 + static_cast<double>(info.step - 1) * h.lr_decay);
  sum.addcmul_(g, g);
  p.add_((g * -clr) / sum.sqrt().add_(h.eps));
  store(states[0], sum);
}

void lion(const kernels::LionHyper& h, const at::Tensor& p, const at::Tensor& g, const std::vector<at::Tensor>& states) {
  at::Tensor m = wide(states[0]);
  lion_update(p, g, m, h.lr, h.beta1, h.beta2, h.weight_decay);
  store(states[0], m);
}

}  // namespace

at::Tensor tensor_grad_partials(const at::Tensor& grad) {
  if (grad.numel() == 0) return at::zeros({3}, grad.options().dtype(at::kDouble));
  const at::Tensor a = grad.reshape({-1}).to(at::kDouble).abs_();
  return at::stack({a.sum(), a.square().sum(), a.max()});
}

kernels::GradStats merge_grad_partials(const at::Tensor& rows, double inv_scale) {
  kernels::GradStats st;
  if (rows.size(0) == 0) return st;
  // max propagates NaN, as GradStats::merge does.
  const at::Tensor t = at::stack({rows.select(1, 0).sum(), rows.select(1, 1).sum(), rows.select(1, 2).max()}).cpu();
  const double* v = t.data_ptr<double>();
  // Scaled after the sums: by a positive factor, so the max is the scaled max exactly,
  // and the sums agree with the prologue's (which scales each element) to rounding.
  st.l1 = v[0] * inv_scale;
  st.l2_sq = v[1] * inv_scale * inv_scale;
  st.linf = v[2] * inv_scale;
  // A sum in double of fp32 or narrower values cannot overflow, so it is inf or NaN
  // exactly when some element is.
  st.nonfinite = !std::isfinite(st.l1);
  return st;
}

kernels::GradStats tensor_grad_stats(const at::Tensor& grad, double inv_scale) {
  return merge_grad_partials(tensor_grad_partials(grad).unsqueeze(0), inv_scale);
}

Status StepKernel::run_tensors(const at::Tensor& master, const std::vector<at::Tensor>& states, const at::Tensor& grad,
                               const at::Tensor& param, const kernels::StepInfo& info, std::uint32_t group) const {
  if (master.scalar_type() != at::kFloat) {
    return make_error(ErrorCode::kInvalidArgument, "the master must be fp32, not {}", c10::toString(master.scalar_type()));
  }
  if (info.step < 1) return make_error(ErrorCode::kInvalidArgument, "step must be >= 1, got {}", info.step);
  if (states.size() != names_.size()) {
    return make_error(ErrorCode::kInvalidArgument, "{} state tensors given, the optimizer has {}", states.size(),
                      names_.size());
  }
  // The scaled gradient, a fresh fp32 tensor (copy: an fp32 grad's to() is the grad
  // itself): the step adds weight decay into it, and the caller's gradient stays as it was.
  at::Tensor g = grad.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true).mul_(info.grad_scale);
  switch (type_) {
    case OptimizerType::kAdam:
    case OptimizerType::kAdamW: adam(for_group(adam_, group), info, master, g, states); break;
    case OptimizerType::kSGD: sgd(for_group(sgd_, group), info, master, g, states); break;
    case OptimizerType::kAdagrad: adagrad(for_group(adagrad_, group), info, master, g, states); break;
    case OptimizerType::kLion: lion(for_group(lion_, group), master, g, states); break;
    case OptimizerType::kLamb:
      return make_error(ErrorCode::kInternal, "StepKernel::run_tensors: Lamb steps in two passes (lamb_*_tensors)");
  }
  if (param.defined()) param.copy_(master);  // round to nearest even, as cast.h
  return ok();
}

// Lamb's passes: m and v as stored (bf16 rounded), then u from them, as the kernels.
Result<at::Tensor> StepKernel::lamb_moments_tensors(const at::Tensor& master, const std::vector<at::Tensor>& states,
                                                    const at::Tensor& grad, const kernels::StepInfo& info,
                                                    std::uint32_t group) const {
  const kernels::LambHyper h = for_group(lamb_, group);
  at::Tensor m = wide(states[0]), v = wide(states[1]);
  lamb_moments_update(grad.to(at::kFloat).mul(info.grad_scale), m, v, h.beta1, h.beta2);
  store(states[0], m);
  store(states[1], v);
  const at::Tensor u = lamb_direction(wide(states[0]), wide(states[1]), master, h.eps, h.weight_decay);
  return at::stack({squared_norm(master), squared_norm(u)});
}

Status StepKernel::lamb_apply_tensors(const at::Tensor& master, const std::vector<at::Tensor>& states,
                                      const at::Tensor& param, const kernels::StepInfo& info, double ratio,
                                      std::uint32_t group) const {
  const kernels::LambHyper h = for_group(lamb_, group);
  const double step_size = lamb_step_size(h.lr, h.beta1, h.beta2, info.step, h.bias_correction);
  master.add_(lamb_direction(wide(states[0]), wide(states[1]), master, h.eps, h.weight_decay), -(step_size * ratio));
  if (param.defined()) param.copy_(master);
  return ok();
}

}  // namespace strata::engine
