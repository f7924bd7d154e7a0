// The gradient prologue: one read-only pass over a gradient shard that yields, for the
// unscaled gradient g * inv_loss_scale, the partial sums behind the L1, L2 and inf norms
// and whether any element is inf or NaN.
//
//   GradStats local;
//   for (const auto& shard : grad_shards) {
//     STRATA_ASSIGN_OR_RETURN(GradStats s, grad_prologue(shard.data, DType::kF32, shard.n, 1.0 / loss_scale, &pool));
//     local.merge(s);
//   }
//   // all-reduce across ranks: l1 and l2_sq with SUM, linf with MAX, nonfinite with MAX (OR)
//   if (global.nonfinite) { /* skip the step, lower the loss scale */ }
//   double coef = clip_coefficient(global.norm(2), max_norm);  // 1 when no clipping is needed
//   StepInfo info{.step = t, .grad_scale = coef / loss_scale};  // for the step kernel
//
// The step kernels then multiply each gradient by grad_scale as they read it, so neither
// unscaling nor clipping is a separate pass over memory (optimizer.h).
//
// Accuracy: sums run in double (per-lane accumulators per block of a few thousand
// elements, then a compensated sum of the blocks), so they match a straightforward
// double-precision sum to ~1e-12 relative. linf is exact. With a pool, each thread sums
// its own block and the partials are combined in block order: the result is
// deterministic for a given thread count.
//
// When nonfinite is true the sums are not meaningful (they are inf or NaN); callers
// check the flag first, as fp16 dynamic loss scaling does.
#pragma once

#include <cstddef>

#include "strata/base/status.h"
#include "strata/kernels/dtype.h"

namespace strata {
class ThreadPool;
}

namespace strata::kernels {

struct GradStats {
  double l1 = 0;      // sum |g * s|
  double l2_sq = 0;   // sum (g * s)^2
  double linf = 0;    // max |g * s|
  bool nonfinite = false;  // some g is inf or NaN

  // Combines partials of disjoint ranges (or ranks): sums add, linf takes the max.
  void merge(const GradStats& other);
  // The total norm of order 1, 2, or infinity (pass HUGE_VAL or any p <= 0 for inf).
  double norm(double p) const;
};

// s is the reciprocal loss scale (1 without loss scaling); it must be finite and > 0.
// Errors (kInvalidArgument) on a null pointer with n > 0 or a bad s.
Result<GradStats> grad_prologue(const void* grad, DType grad_dtype, std::size_t n, double inv_loss_scale,
                                ThreadPool* pool = nullptr);

// torch.nn.utils.clip_grad_norm_'s coefficient: min(1, max_norm / (total_norm + 1e-6)).
// max_norm <= 0 means no clipping (1).
double clip_coefficient(double total_norm, double max_norm);

}  // namespace strata::kernels
