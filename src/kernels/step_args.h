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

using AdamFn = void (*)(const AdamArgs&, std::size_t begin, std::size_t end);
using SgdFn = void (*)(const SgdArgs&, std::size_t begin, std::size_t end);
using AdagradFn = void (*)(const AdagradArgs&, std::size_t begin, std::size_t end);
using LionFn = void (*)(const LionArgs&, std::size_t begin, std::size_t end);

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

// The table of the target Highway's dispatch chooses now (honours force_target).
const AdamTable& adam_table();
const OneStateTable& one_state_table();

// Builds the float constants from the public hyperparameters (validated by the caller).
AdamArgs make_adam_args(const StepShard& s, const AdamState& st, const AdamHyper& h, const StepInfo& info);
SgdArgs make_sgd_args(const StepShard& s, void* buf, const SgdHyper& h, const StepInfo& info);
AdagradArgs make_adagrad_args(const StepShard& s, void* sum, const AdagradHyper& h, const StepInfo& info);
LionArgs make_lion_args(const StepShard& s, void* m, const LionHyper& h, const StepInfo& info);

}  // namespace strata::kernels::detail
