// Internal: what the public step functions (optimizer.cpp) hand to the per-target SIMD
// loops (adam_simd.cpp, one_state_simd.cpp) and to the scalar reference (reference.h).
//
// Hyperparameters arrive here already rounded to float the way ATen rounds a double
// Scalar for a float tensor, so the vector code, the scalar reference and LibTorch all
// start from the same constants. Loops take [begin, end) so one call serves one thread's
// block; pointers are the shard's bases (element 0), not the block's.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/internal.h"
#include "strata/kernels/dtype.h"
#include "strata/kernels/optimizer.h"

namespace strata::kernels::detail {

// Index of the compute-copy variant: none, or one of the three dtypes.
enum ParamIndex : int { kParamNone = 0, kParamF32 = 1, kParamBF16 = 2, kParamF16 = 3 };
constexpr int kNumGrad = kNumDtype, kNumState = 2, kNumParam = 4;

constexpr int state_index(DType t) { return t == DType::kF32 ? 0 : 1; }  // only kF32, kBF16
inline int param_index(const void* param, DType t) { return param ? 1 + static_cast<int>(t) : kParamNone; }

struct AdamArgs {
  float* master;
  const void* grad;
  void* m;
  void* v;
  void* vmax;   // amsgrad only
  void* param;  // may be null
  float grad_scale;
  float wd;          // Adam's L2 term, used when l2
  float decay;       // AdamW's 1 - lr*wd, used when decoupled
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  float bc2_sqrt;    // sqrt(1 - beta2^step)
  float eps;
  float neg_step_size;  // -lr / (1 - beta1^step)
  bool l2, decoupled, amsgrad;
};

struct SgdArgs {
  float* master;
  const void* grad;
  void* buf;    // momentum buffer, used when momentum
  void* param;
  float grad_scale;
  float wd;
  float momentum_f;
  float one_minus_dampening;
  float neg_lr;
  bool use_wd, momentum, first, nesterov;
};

struct AdagradArgs {
  float* master;
  const void* grad;
  void* sum;
  void* param;
  float grad_scale;
  float wd;
  float eps;
  float neg_clr;
  bool use_wd;
};

struct LionArgs {
  float* master;
  const void* grad;
  void* m;
  void* param;
  float grad_scale;
  float decay;  // 1 - lr*wd, used when decoupled
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  float neg_lr;
  bool decoupled;
};

// Lamb's two passes (optimizer.h): moments() updates m and v and sums p^2 and u^2;
// apply() recomputes u from the new m and v and steps p by neg_ratio * u.
struct LambArgs {
  float* master;
  const void* grad;  // moments only
  void* m;
  void* v;
  void* param;  // apply only; may be null
  float grad_scale;
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  float eps;
  float wd;         // the decay term of u, used when use_wd
  float neg_ratio;  // apply: -(step_size * trust ratio)
  bool use_wd;
};
// Unscaled sums of one range, in double; blocks added with a compensated sum.
struct LambSumsPartial {
  double p_sum = 0, p_comp = 0;
  double u_sum = 0, u_comp = 0;
  void add_block(double p, double u) {
    PrologueSums::add(p_sum, p_comp, p);
    PrologueSums::add(u_sum, u_comp, u);
  }
  void merge(const LambSumsPartial& o) { add_block(o.p(), o.u()); }
  double p() const { return p_sum + p_comp; }
  double u() const { return u_sum + u_comp; }
};

using AdamFn = void (*)(const AdamArgs&, std::size_t begin, std::size_t end);
using SgdFn = void (*)(const SgdArgs&, std::size_t begin, std::size_t end);
using AdagradFn = void (*)(const AdagradArgs&, std::size_t begin, std::size_t end);
using LionFn = void (*)(const LionArgs&, std::size_t begin, std::size_t end);
using LambMomentsFn = void (*)(const LambArgs&, std::size_t begin, std::size_t end, LambSumsPartial* out);
using LambApplyFn = void (*)(const LambArgs&, std::size_t begin, std::size_t end);

// Each SIMD file fills one table per target; the dispatch picks the current target's.
struct AdamTable {
  const char* target;
  AdamFn fn[kNumGrad][kNumState][kNumParam];
};
struct OneStateTable {  // the optimizers with one state tensor
  const char* target;
  SgdFn sgd[kNumGrad][kNumState][kNumParam];
  AdagradFn adagrad[kNumGrad][kNumState][kNumParam];
  LionFn lion[kNumGrad][kNumState][kNumParam];
};

struct LambTable {
  const char* target;
  LambMomentsFn moments[kNumGrad][kNumState];
  LambApplyFn apply[kNumState][kNumParam];
};

// The table of the target Highway's dispatch chooses now (honours force_target).
const AdamTable& adam_table();
const OneStateTable& one_state_table();
const LambTable& lamb_table();

// Builds the float constants from the public hyperparameters (validated by the caller).
AdamArgs make_adam_args(const StepShard& s, const AdamState& st, const AdamHyper& h, const StepInfo& info);
SgdArgs make_sgd_args(const StepShard& s, void* buf, const SgdHyper& h, const StepInfo& info);
AdagradArgs make_adagrad_args(const StepShard& s, void* sum, const AdagradHyper& h, const StepInfo& info);
LionArgs make_lion_args(const StepShard& s, void* m, const LionHyper& h, const StepInfo& info);
// neg_ratio is -(step_size * ratio), step_size = lr * sqrt(bc2) / bc1 with bias correction
// (lr without), both in double and rounded once; moments() ignores it.
LambArgs make_lamb_args(const StepShard& s, const AdamState& st, const LambHyper& h, const StepInfo& info,
                        double ratio);

}  // namespace strata::kernels::detail
