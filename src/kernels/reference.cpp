// Scalar references (reference.h). Keep each loop body operation-for-operation equal to
// its SIMD twin in adam_simd.cpp / one_state_simd.cpp; this file, like those, builds
// with -ffp-contract=off so the compiler does not fuse a*b+c into an FMA.
#include "kernels/reference.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/step_args.h"

namespace strata::kernels::detail {

float load_as_f32(const void* base, DType t, std::size_t i) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(base)[i];
    case DType::kBF16: return f32_from_bf16(static_cast<const std::uint16_t*>(base)[i]);
    case DType::kF16: return f32_from_f16(static_cast<const std::uint16_t*>(base)[i]);
  }
  return 0;
}

void store_from_f32(void* base, DType t, std::size_t i, float v) {
  switch (t) {
    case DType::kF32: static_cast<float*>(base)[i] = v; return;
    case DType::kBF16: static_cast<std::uint16_t*>(base)[i] = bf16_from_f32(v); return;
    case DType::kF16: static_cast<std::uint16_t*>(base)[i] = f16_from_f32(v); return;
  }
}

namespace {
// Writes the compute copy, if the shard has one.
void store_param(const StepShard& s, std::size_t i, float w) {
  if (s.param != nullptr) store_from_f32(s.param, s.param_dtype, i, w);
}
}  // namespace

void adam_reference(const StepShard& shard, const AdamState& state, const AdamHyper& hyper, const StepInfo& info) {
  const AdamArgs a = make_adam_args(shard, state, hyper, info);
  const DType st = shard.state_dtype;
  for (std::size_t i = 0; i < shard.n; ++i) {
    float g = load_as_f32(shard.grad, shard.grad_dtype, i) * a.grad_scale;
    float w = shard.master[i];
    if (a.l2) g = g + w * a.wd;
    if (a.decoupled) w = w * a.decay;
    const float m = load_as_f32(state.exp_avg, st, i) * a.beta1 + g * a.one_minus_beta1;
    const float v = load_as_f32(state.exp_avg_sq, st, i) * a.beta2 + (g * a.one_minus_beta2) * g;
    store_from_f32(state.exp_avg, st, i, m);
    store_from_f32(state.exp_avg_sq, st, i, v);
    float v_used = v;
    if (a.amsgrad) {
      v_used = std::max(load_as_f32(state.max_exp_avg_sq, st, i), v);
      store_from_f32(state.max_exp_avg_sq, st, i, v_used);
    }
    const float denom = std::sqrt(v_used) / a.bc2_sqrt + a.eps;
    w = w + (a.neg_step_size * m) / denom;
    shard.master[i] = w;
    store_param(shard, i, w);
  }
}

void sgd_reference(const StepShard& shard, void* buf, const SgdHyper& hyper, const StepInfo& info) {
  const SgdArgs a = make_sgd_args(shard, buf, hyper, info);
  for (std::size_t i = 0; i < shard.n; ++i) {
    float g = load_as_f32(shard.grad, shard.grad_dtype, i) * a.grad_scale;
    float w = shard.master[i];
    if (a.use_wd) g = g + w * a.wd;
    if (a.momentum) {
      const float b = a.first ? g : load_as_f32(buf, shard.state_dtype, i) * a.momentum_f + g * a.one_minus_dampening;
      store_from_f32(buf, shard.state_dtype, i, b);
      g = a.nesterov ? g + b * a.momentum_f : b;
    }
    w = w + g * a.neg_lr;
    shard.master[i] = w;
    store_param(shard, i, w);
  }
}

void adagrad_reference(const StepShard& shard, void* sum, const AdagradHyper& hyper, const StepInfo& info) {
  const AdagradArgs a = make_adagrad_args(shard, sum, hyper, info);
  for (std::size_t i = 0; i < shard.n; ++i) {
    float g = load_as_f32(shard.grad, shard.grad_dtype, i) * a.grad_scale;
    float w = shard.master[i];
    if (a.use_wd) g = g + w * a.wd;
    const float s = load_as_f32(sum, shard.state_dtype, i) + g * g;
    store_from_f32(sum, shard.state_dtype, i, s);
    const float std_dev = std::sqrt(s) + a.eps;
    w = w + (a.neg_clr * g) / std_dev;
    shard.master[i] = w;
    store_param(shard, i, w);
  }
}

void lion_reference(const StepShard& shard, void* exp_avg, const LionHyper& hyper, const StepInfo& info) {
  const LionArgs a = make_lion_args(shard, exp_avg, hyper, info);
  const DType st = shard.state_dtype;
  for (std::size_t i = 0; i < shard.n; ++i) {
    const float g = load_as_f32(shard.grad, shard.grad_dtype, i) * a.grad_scale;
    float w = shard.master[i];
    if (a.decoupled) w = w * a.decay;
    const float m = load_as_f32(exp_avg, st, i);
    const float c = m * a.beta1 + g * a.one_minus_beta1;
    w = w + (c > 0 ? a.neg_lr : (c < 0 ? -a.neg_lr : -0.0f));
    store_from_f32(exp_avg, st, i, m * a.beta2 + g * a.one_minus_beta2);
    shard.master[i] = w;
    store_param(shard, i, w);
  }
}

namespace {

// u = m / (sqrt(v) + eps) + wd*p, the operations of lamb_simd.cpp's LambUpdate.
float lamb_u(const LambArgs& a, float m, float v, float w) {
  float u = m / (std::sqrt(v) + a.eps);
  if (a.use_wd) u = u + w * a.wd;
  return u;
}

}  // namespace

LambSums lamb_moments_reference(const StepShard& shard, const AdamState& state, const LambHyper& hyper,
                                const StepInfo& info) {
  const LambArgs a = make_lamb_args(shard, state, hyper, info, 1.0);
  const DType st = shard.state_dtype;
  LambSums sums;
  for (std::size_t i = 0; i < shard.n; ++i) {
    const float g = load_as_f32(shard.grad, shard.grad_dtype, i) * a.grad_scale;
    const float w = shard.master[i];
    store_from_f32(state.exp_avg, st, i, load_as_f32(state.exp_avg, st, i) * a.beta1 + g * a.one_minus_beta1);
    store_from_f32(state.exp_avg_sq, st, i,
                   load_as_f32(state.exp_avg_sq, st, i) * a.beta2 + (g * a.one_minus_beta2) * g);
    const double u = lamb_u(a, load_as_f32(state.exp_avg, st, i), load_as_f32(state.exp_avg_sq, st, i), w);
    sums.p_sq += double{w} * w;
    sums.u_sq += u * u;
  }
  return sums;
}

void lamb_apply_reference(const StepShard& shard, const AdamState& state, const LambHyper& hyper,
                          const StepInfo& info, double ratio) {
  const LambArgs a = make_lamb_args(shard, state, hyper, info, ratio);
  const DType st = shard.state_dtype;
  for (std::size_t i = 0; i < shard.n; ++i) {
    float w = shard.master[i];
    w = w + lamb_u(a, load_as_f32(state.exp_avg, st, i), load_as_f32(state.exp_avg_sq, st, i), w) * a.neg_ratio;
    shard.master[i] = w;
    store_param(shard, i, w);
  }
}

void cast_reference(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t n) {
  if (src_dtype == dst_dtype) {  // a copy: signalling NaNs stay as they are
    if (n > 0) std::memcpy(dst, src, n * dtype_size(src_dtype));
    return;
  }
  for (std::size_t i = 0; i < n; ++i) store_from_f32(dst, dst_dtype, i, load_as_f32(src, src_dtype, i));
}

GradStats grad_prologue_reference(const void* grad, DType grad_dtype, std::size_t n, double s) {
  GradStats out;
  for (std::size_t i = 0; i < n; ++i) {
    const float g = load_as_f32(grad, grad_dtype, i);
    if (!std::isfinite(g)) out.nonfinite = true;
    const double x = static_cast<double>(g) * s;
    out.l1 += std::abs(x);
    out.l2_sq += x * x;
    out.linf = std::max(out.linf, std::abs(x));
  }
  return out;
}

}  // namespace strata::kernels::detail
