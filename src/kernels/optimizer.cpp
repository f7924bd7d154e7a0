// The public step functions (optimizer.h): check arguments, round the hyperparameters
// to float constants once per call, pick the loop for this target and these dtypes, and
// split the shard across the pool.
#include "strata/kernels/optimizer.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <utility>
#include <vector>

#include "kernels/internal.h"
#include "kernels/step_args.h"

namespace strata::kernels {
namespace detail {

// Note [float constants]: ATen turns a double Scalar into the tensor's dtype before the
// elementwise loop, so torch's step computes with float(beta1), float(1 - beta1), ...
// The double expressions below are torch's, term by term, rounded once at the end.
AdamArgs make_adam_args(const StepShard& s, const AdamState& st, const AdamHyper& h, const StepInfo& info) {
  const double step = static_cast<double>(info.step);
  const double bc1 = 1 - std::pow(h.beta1, step);
  const double bc2 = 1 - std::pow(h.beta2, step);
  AdamArgs a{};
  a.master = s.master;
  a.grad = s.grad;
  a.m = st.exp_avg;
  a.v = st.exp_avg_sq;
  a.vmax = st.max_exp_avg_sq;
  a.param = s.param;
  a.grad_scale = static_cast<float>(info.grad_scale);
  a.wd = static_cast<float>(h.weight_decay);
  a.decay = static_cast<float>(1 - h.lr * h.weight_decay);
  a.beta1 = static_cast<float>(h.beta1);
  a.one_minus_beta1 = static_cast<float>(1 - h.beta1);
  a.beta2 = static_cast<float>(h.beta2);
  a.one_minus_beta2 = static_cast<float>(1 - h.beta2);
  a.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  a.eps = static_cast<float>(h.eps);
  a.neg_step_size = static_cast<float>(-(h.lr / bc1));
  a.l2 = !h.decoupled_weight_decay && h.weight_decay != 0;
  a.decoupled = h.decoupled_weight_decay && h.weight_decay != 0;
  a.amsgrad = h.amsgrad;
  return a;
}

SgdArgs make_sgd_args(const StepShard& s, void* buf, const SgdHyper& h, const StepInfo& info) {
  SgdArgs a{};
  a.master = s.master;
  a.grad = s.grad;
  a.buf = buf;
  a.param = s.param;
  a.grad_scale = static_cast<float>(info.grad_scale);
  a.wd = static_cast<float>(h.weight_decay);
  a.momentum_f = static_cast<float>(h.momentum);
  a.one_minus_dampening = static_cast<float>(1 - h.dampening);
  a.neg_lr = static_cast<float>(-1 * h.lr);
  a.use_wd = h.weight_decay != 0;
  a.momentum = h.momentum != 0;
  a.first = info.step == 1;
  a.nesterov = h.nesterov;
  return a;
}

AdagradArgs make_adagrad_args(const StepShard& s, void* sum, const AdagradHyper& h, const StepInfo& info) {
  AdagradArgs a{};
  a.master = s.master;
  a.grad = s.grad;
  a.sum = sum;
  a.param = s.param;
  a.grad_scale = static_cast<float>(info.grad_scale);
  a.wd = static_cast<float>(h.weight_decay);
  a.eps = static_cast<float>(h.eps);
  const double clr = h.lr / (1 + static_cast<double>(info.step - 1) * h.lr_decay);
  a.neg_clr = static_cast<float>(-clr);
  a.use_wd = h.weight_decay != 0;
  return a;
}

LionArgs make_lion_args(const StepShard& s, void* m, const LionHyper& h, const StepInfo& info) {
  LionArgs a{};
  a.master = s.master;
  a.grad = s.grad;
  a.m = m;
  a.param = s.param;
  a.grad_scale = static_cast<float>(info.grad_scale);
  a.decay = static_cast<float>(1 - h.lr * h.weight_decay);
  a.beta1 = static_cast<float>(h.beta1);
  a.one_minus_beta1 = static_cast<float>(1 - h.beta1);
  a.beta2 = static_cast<float>(h.beta2);
  a.one_minus_beta2 = static_cast<float>(1 - h.beta2);
  a.neg_lr = static_cast<float>(-h.lr);
  a.decoupled = h.weight_decay != 0;
  return a;
}

LambArgs make_lamb_args(const StepShard& s, const AdamState& st, const LambHyper& h, const StepInfo& info,
                        double ratio) {
  LambArgs a{};
  a.master = s.master;
  a.grad = s.grad;
  a.m = st.exp_avg;
  a.v = st.exp_avg_sq;
  a.param = s.param;
  a.grad_scale = static_cast<float>(info.grad_scale);
  a.beta1 = static_cast<float>(h.beta1);
  a.one_minus_beta1 = static_cast<float>(1 - h.beta1);
  a.beta2 = static_cast<float>(h.beta2);
  a.one_minus_beta2 = static_cast<float>(1 - h.beta2);
  a.eps = static_cast<float>(h.eps);
  a.wd = static_cast<float>(h.weight_decay);
  double step_size = h.lr;
  if (h.bias_correction) {
    const double step = static_cast<double>(info.step);
    step_size = h.lr * std::sqrt(1 - std::pow(h.beta2, step)) / (1 - std::pow(h.beta1, step));
  }
  a.neg_ratio = static_cast<float>(-(step_size * ratio));
  a.use_wd = h.weight_decay != 0;
  return a;
}

}  // namespace detail

namespace {

// Checks what every step needs: arrays, dtypes, step, grad_scale (Lamb's second pass
// reads no gradient).
Status check_shard(const char* op, const StepShard& s, const StepInfo& info, bool reads_grad = true) {
  if (!detail::valid_dtype(s.grad_dtype) || !detail::valid_dtype(s.param_dtype)) {
    return make_error(ErrorCode::kInvalidArgument, "{}: unknown grad or param dtype ({}, {})", op,
                      static_cast<int>(s.grad_dtype), static_cast<int>(s.param_dtype));
  }
  if (s.state_dtype != DType::kF32 && s.state_dtype != DType::kBF16) {
    return make_error(ErrorCode::kInvalidArgument, "{}: optimizer states must be fp32 or bf16, got {}", op,
                      dtype_name(s.state_dtype));
  }
  if (info.step < 1) return make_error(ErrorCode::kInvalidArgument, "{}: step must be >= 1, got {}", op, info.step);
  if (!std::isfinite(info.grad_scale)) {
    return make_error(ErrorCode::kInvalidArgument, "{}: grad_scale must be finite, got {}", op, info.grad_scale);
  }
  if (s.n > 0 && (s.master == nullptr || (reads_grad && s.grad == nullptr))) {
    return make_error(ErrorCode::kInvalidArgument, "{}: {} is null (n={})", op,
                      s.master == nullptr ? "master" : "grad", s.n);
  }
  if (s.param != nullptr && s.param == static_cast<void*>(s.master) && s.param_dtype != DType::kF32) {
    return make_error(ErrorCode::kInvalidArgument, "{}: param aliases master but is {}, not fp32", op,
                      dtype_name(s.param_dtype));
  }
  return ok();
}

Status need(const char* op, const void* p, const char* what, std::size_t n) {
  if (n > 0 && p == nullptr) return make_error(ErrorCode::kInvalidArgument, "{}: {} is null (n={})", op, what, n);
  return ok();
}

Status check_range(const char* op, const char* what, double v, double lo, bool lo_open, double hi, bool hi_open) {
  const bool ok_lo = lo_open ? v > lo : v >= lo;
  const bool ok_hi = hi_open ? v < hi : v <= hi;
  if (std::isnan(v) || !ok_lo || !ok_hi) {
    return make_error(ErrorCode::kInvalidArgument, "{}: {} must be in {}{}, {}{}, got {}", op, what,
                      lo_open ? "(" : "[", lo, hi, hi_open ? ")" : "]", v);
  }
  return ok();
}

constexpr double kInf = HUGE_VAL;

}  // namespace

Status adam_step(const StepShard& shard, const AdamState& state, const AdamHyper& h, const StepInfo& info,
                 ThreadPool* pool) {
  const char* op = h.decoupled_weight_decay ? "adamw_step" : "adam_step";
  STRATA_RETURN_IF_ERROR(check_shard(op, shard, info));
  STRATA_RETURN_IF_ERROR(need(op, state.exp_avg, "exp_avg", shard.n));
  STRATA_RETURN_IF_ERROR(need(op, state.exp_avg_sq, "exp_avg_sq", shard.n));
  if (h.amsgrad) STRATA_RETURN_IF_ERROR(need(op, state.max_exp_avg_sq, "max_exp_avg_sq (amsgrad)", shard.n));
  STRATA_RETURN_IF_ERROR(check_range(op, "lr", h.lr, 0, false, kInf, true));
  STRATA_RETURN_IF_ERROR(check_range(op, "eps", h.eps, 0, false, kInf, true));
  STRATA_RETURN_IF_ERROR(check_range(op, "beta1", h.beta1, 0, false, 1, true));
  STRATA_RETURN_IF_ERROR(check_range(op, "beta2", h.beta2, 0, false, 1, true));
  STRATA_RETURN_IF_ERROR(check_range(op, "weight_decay", h.weight_decay, 0, false, kInf, true));

  const detail::AdamArgs args = detail::make_adam_args(shard, state, h, info);
  const detail::AdamFn fn = detail::adam_table().fn[detail::grad_index(shard.grad_dtype)]
                                                   [detail::state_index(shard.state_dtype)]
                                                   [detail::param_index(shard.param, shard.param_dtype)];
  detail::run_blocks(pool, shard.n, [&](std::size_t b, std::size_t e) { fn(args, b, e); });
  return ok();
}

Status sgd_step(const StepShard& shard, void* momentum_buffer, const SgdHyper& h, const StepInfo& info,
                ThreadPool* pool) {
  const char* op = "sgd_step";
  STRATA_RETURN_IF_ERROR(check_shard(op, shard, info));
  STRATA_RETURN_IF_ERROR(check_range(op, "lr", h.lr, 0, false, kInf, true));
  STRATA_RETURN_IF_ERROR(check_range(op, "momentum", h.momentum, 0, false, kInf, true));
  STRATA_RETURN_IF_ERROR(check_range(op, "dampening", h.dampening, -kInf, true, kInf, true));
  STRATA_RETURN_IF_ERROR(check_range(op, "weight_decay", h.weight_decay, 0, false, kInf, true));
  if (h.nesterov && (h.momentum <= 0 || h.dampening != 0)) {
    return make_error(ErrorCode::kInvalidArgument,
                      "{}: nesterov momentum requires momentum > 0 and zero dampening (momentum={}, dampening={})", op,
                      h.momentum, h.dampening);
  }
  if (h.momentum != 0) STRATA_RETURN_IF_ERROR(need(op, momentum_buffer, "momentum_buffer", shard.n));

  const detail::SgdArgs args = detail::make_sgd_args(shard, momentum_buffer, h, info);
  const detail::SgdFn fn = detail::one_state_table().sgd[detail::grad_index(shard.grad_dtype)]
                                                          [detail::state_index(shard.state_dtype)]
                                                          [detail::param_index(shard.param, shard.param_dtype)];
  detail::run_blocks(pool, shard.n, [&](std::size_t b, std::size_t e) { fn(args, b, e); });
  return ok();
}

Status adagrad_step(const StepShard& shard, void* sum, const AdagradHyper& h, const StepInfo& info,
                    ThreadPool* pool) {
  const char* op = "adagrad_step";
  STRATA_RETURN_IF_ERROR(check_shard(op, shard, info));
  STRATA_RETURN_IF_ERROR(need(op, sum, "sum", shard.n));
  STRATA_RETURN_IF_ERROR(check_range(op, "lr", h.lr, 0, false, kInf, true));
  STRATA_RETURN_IF_ERROR(check_range(op, "lr_decay", h.lr_decay, 0, false, kInf, true));
  STRATA_RETURN_IF_ERROR(check_range(op, "weight_decay", h.weight_decay, 0, false, kInf, true));
  STRATA_RETURN_IF_ERROR(check_range(op, "eps", h.eps, 0, false, kInf, true));

  const detail::AdagradArgs args = detail::make_adagrad_args(shard, sum, h, info);
  const detail::AdagradFn fn = detail::one_state_table().adagrad[detail::grad_index(shard.grad_dtype)]
                                                                  [detail::state_index(shard.state_dtype)]
                                                                  [detail::param_index(shard.param, shard.param_dtype)];
  detail::run_blocks(pool, shard.n, [&](std::size_t b, std::size_t e) { fn(args, b, e); });
  return ok();
}

Status lion_step(const StepShard& shard, void* exp_avg, const LionHyper& h, const StepInfo& info, ThreadPool* pool) {
  const char* op = "lion_step";
  STRATA_RETURN_IF_ERROR(check_shard(op, shard, info));
  STRATA_RETURN_IF_ERROR(need(op, exp_avg, "exp_avg", shard.n));
  STRATA_RETURN_IF_ERROR(check_range(op, "lr", h.lr, 0, false, kInf, true));
  // Unlike Adam's, a beta of 1 is allowed: beta1 = 1 steps by the momentum's sign alone.
  STRATA_RETURN_IF_ERROR(check_range(op, "beta1", h.beta1, 0, false, 1, false));
  STRATA_RETURN_IF_ERROR(check_range(op, "beta2", h.beta2, 0, false, 1, false));
  STRATA_RETURN_IF_ERROR(check_range(op, "weight_decay", h.weight_decay, 0, false, kInf, true));

  const detail::LionArgs args = detail::make_lion_args(shard, exp_avg, h, info);
  const detail::LionFn fn = detail::one_state_table().lion[detail::grad_index(shard.grad_dtype)]
                                                   [detail::state_index(shard.state_dtype)]
                                                   [detail::param_index(shard.param, shard.param_dtype)];
  detail::run_blocks(pool, shard.n, [&](std::size_t b, std::size_t e) { fn(args, b, e); });
  return ok();
}

namespace {

// What both Lamb passes check.
Status check_lamb(const char* op, const StepShard& shard, const AdamState& state, const LambHyper& h,
                  const StepInfo& info, bool reads_grad) {
  STRATA_RETURN_IF_ERROR(check_shard(op, shard, info, reads_grad));
  STRATA_RETURN_IF_ERROR(need(op, state.exp_avg, "exp_avg", shard.n));
  STRATA_RETURN_IF_ERROR(need(op, state.exp_avg_sq, "exp_avg_sq", shard.n));
  STRATA_RETURN_IF_ERROR(check_range(op, "lr", h.lr, 0, false, kInf, true));
  // eps > 0: u of an element that never had a gradient is 0 / (0 + eps), not NaN.
  STRATA_RETURN_IF_ERROR(check_range(op, "eps", h.eps, 0, true, kInf, true));
  STRATA_RETURN_IF_ERROR(check_range(op, "beta1", h.beta1, 0, false, 1, true));
  STRATA_RETURN_IF_ERROR(check_range(op, "beta2", h.beta2, 0, false, 1, true));
  STRATA_RETURN_IF_ERROR(check_range(op, "weight_decay", h.weight_decay, 0, false, kInf, true));
  STRATA_RETURN_IF_ERROR(check_range(op, "min_coeff", h.min_coeff, 0, false, kInf, true));
  STRATA_RETURN_IF_ERROR(check_range(op, "max_coeff", h.max_coeff, h.min_coeff, false, kInf, true));
  return ok();
}

}  // namespace

Result<LambSums> lamb_moments(const StepShard& shard, const AdamState& state, const LambHyper& h,
                              const StepInfo& info, ThreadPool* pool) {
  STRATA_RETURN_IF_ERROR(check_lamb("lamb_moments", shard, state, h, info, /*reads_grad=*/true));
  const detail::LambArgs args = detail::make_lamb_args(shard, state, h, info, 1.0);
  const detail::LambMomentsFn fn =
      detail::lamb_table().moments[detail::grad_index(shard.grad_dtype)][detail::state_index(shard.state_dtype)];
  // Each block's sums, combined in block order: the result does not depend on which
  // thread finishes first.
  std::vector<std::pair<std::size_t, detail::LambSumsPartial>> parts;
  std::mutex mu;
  detail::run_blocks(pool, shard.n, [&](std::size_t b, std::size_t e) {
    detail::LambSumsPartial part;
    fn(args, b, e, &part);
    std::lock_guard lock(mu);
    parts.emplace_back(b, part);
  });
  std::sort(parts.begin(), parts.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  detail::LambSumsPartial total;
  for (const auto& [b, part] : parts) total.merge(part);
  return LambSums{.p_sq = total.p(), .u_sq = total.u()};
}

double lamb_ratio(const LambSums& whole, const LambHyper& h) {
  const double p = std::sqrt(whole.p_sq), u = std::sqrt(whole.u_sq);
  if (p == 0 || u == 0) return 1.0;
  return std::clamp(p / u, h.min_coeff, h.max_coeff);
}

Status lamb_apply(const StepShard& shard, const AdamState& state, const LambHyper& h, const StepInfo& info,
                  double ratio, ThreadPool* pool) {
  const char* op = "lamb_apply";
  STRATA_RETURN_IF_ERROR(check_lamb(op, shard, state, h, info, /*reads_grad=*/false));
  // A NaN or inf norm (an inf master) would spread to every element of the parameter.
  STRATA_RETURN_IF_ERROR(check_range(op, "ratio", ratio, 0, true, kInf, true));
  const detail::LambArgs args = detail::make_lamb_args(shard, state, h, info, ratio);
  const detail::LambApplyFn fn = detail::lamb_table().apply[detail::state_index(shard.state_dtype)]
                                                           [detail::param_index(shard.param, shard.param_dtype)];
  detail::run_blocks(pool, shard.n, [&](std::size_t b, std::size_t e) { fn(args, b, e); });
  return ok();
}

}  // namespace strata::kernels
