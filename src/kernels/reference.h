// Internal: plain scalar references of every kernel, one element at a time, for tests.
//
//   detail::adam_reference(shard, state, hyper, info);   // same arguments as adam_step
//   EXPECT_EQ(bits(simd_master), bits(ref_master));      // every target, bit for bit
//
// Each does exactly the floating-point operations of its SIMD twin, in the same order,
// with the same float constants (make_*_args), so the SIMD results must match bit for
// bit. The gradient-prologue reference is the straightforward double sum the issue asks
// for; it matches the SIMD version to rounding only (summation order differs).
// Arguments are not validated: tests pass valid ones.
#pragma once

#include <cstddef>

#include "strata/kernels/dtype.h"
#include "strata/kernels/grad_prologue.h"
#include "strata/kernels/optimizer.h"

namespace strata::kernels::detail {

void adam_reference(const StepShard& shard, const AdamState& state, const AdamHyper& hyper, const StepInfo& info);
void sgd_reference(const StepShard& shard, void* momentum_buffer, const SgdHyper& hyper, const StepInfo& info);
void adagrad_reference(const StepShard& shard, void* sum, const AdagradHyper& hyper, const StepInfo& info);
void lion_reference(const StepShard& shard, void* exp_avg, const LionHyper& hyper, const StepInfo& info);
// Lamb's passes; the sums are plain double sums in element order.
LambSums lamb_moments_reference(const StepShard& shard, const AdamState& state, const LambHyper& hyper,
                                const StepInfo& info);
void lamb_apply_reference(const StepShard& shard, const AdamState& state, const LambHyper& hyper,
                          const StepInfo& info, double ratio);
void cast_reference(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t n);
GradStats grad_prologue_reference(const void* grad, DType grad_dtype, std::size_t n, double inv_loss_scale);

// One element of an array of the given dtype, as float / stored from float (RNE).
float load_as_f32(const void* base, DType t, std::size_t i);
void store_from_f32(void* base, DType t, std::size_t i, float v);

}  // namespace strata::kernels::detail
