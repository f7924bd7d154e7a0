// Fused CPU optimizer steps over one rank's contiguous shard: Adam, AdamW, SGD, Adagrad,
// Lion, and Lamb's two passes.
//
//   StepShard shard{.n = n, .master = master, .grad = grad, .grad_dtype = DType::kF32,
//                   .param = compute_copy, .param_dtype = DType::kBF16};
//   AdamState state{.exp_avg = m, .exp_avg_sq = v};
//   AdamHyper hyper{.lr = 1e-3, .weight_decay = 0.01, .decoupled_weight_decay = true};  // AdamW
//   STRATA_RETURN_IF_ERROR(adam_step(shard, state, hyper, {.step = t, .grad_scale = coef / loss_scale}, &pool));
//
// One pass: every element of every array is read once and written once. The gradient is
// multiplied by grad_scale as it is read (the engine passes (1/loss_scale) * clip
// coefficient, from grad_prologue.h), the fp32 master and the states are updated, and the
// compute copy, if any, is written from the new master with round-to-nearest-even (so it
// equals cast(master) bit for bit, cast.h).
//
// Formulas follow LibTorch 1.13's torch::optim step() operation by operation, in fp32 with
// hyperparameters rounded to float as ATen does:
//   Adam:    g += wd*p (if wd != 0); m = b1*m + (1-b1)*g; v = b2*v + ((1-b2)*g)*g;
//            [amsgrad: vmax = max(vmax, v), used for v below]
//            p += (-lr/bc1 * m) / (sqrt(v) / sqrt(bc2) + eps),  bc_i = 1 - beta_i^step
//   AdamW:   p *= 1 - lr*wd (if wd != 0), then the same update without the g += wd*p.
//   SGD:     g += wd*p; buf = (step == 1) ? g : momentum*buf + (1-dampening)*g;
//            g = nesterov ? g + momentum*buf : buf (if momentum != 0); p += -lr*g
//   Adagrad: g += wd*p; sum += g*g; p += (-clr*g) / (sqrt(sum) + eps),
//            clr = lr / (1 + (step-1)*lr_decay)
//   Lion:    (no LibTorch class; the paper's Algorithm 2 and DeepSpeed's CPU Lion)
//            p *= 1 - lr*wd (if wd != 0); c = b1*m + (1-b1)*g; p += -lr*sign(c)
//            (sign(0) = 0, as torch.sign); m = b2*m + (1-b2)*g
// They do not use fused multiply-add, so every SIMD target gives the same bits as the
// scalar reference; against LibTorch (which does use FMA in places) fp32 agrees to ~1e-7.
//
// Precision: master and arithmetic are fp32. States (m, v, vmax, momentum, sum) are fp32
// or bf16 (half the memory, rounded RNE on every store). Gradients are fp32, bf16 or
// fp16. The compute copy is fp32, bf16 or fp16.
//
// Threads: with a pool the shard is split into one contiguous block per thread (block
// edges on 64-element boundaries, so with 64-byte aligned arrays no two threads write
// one cache line); with nullptr it runs on the caller. Shards under 32 Ki elements stay
// on the caller either way. Arrays may have any alignment but must not overlap, except that
// param may equal master when both are fp32.
//
// Errors (kInvalidArgument, with the offending value): a null array that the call needs,
// a state dtype other than fp32/bf16, step < 1, and hyperparameters torch rejects
// (lr < 0, eps < 0, betas outside [0, 1), weight_decay < 0, momentum < 0, nesterov
// without momentum or with dampening, lr_decay < 0; for Lion, betas outside [0, 1]; for
// Lamb, eps <= 0 or min_coeff > max_coeff or a ratio that is not finite and > 0).
#pragma once

#include <cstddef>
#include <cstdint>

#include "strata/base/status.h"
#include "strata/kernels/dtype.h"

namespace strata {
class ThreadPool;
}

namespace strata::kernels {

// The arrays every step touches: n elements each, one rank's shard of a chunk.
struct StepShard {
  std::size_t n = 0;
  float* master = nullptr;       // fp32 master weights, updated in place
  const void* grad = nullptr;    // the gradient shard
  DType grad_dtype = DType::kF32;
  void* param = nullptr;         // optional compute copy written from the new master; nullptr = none
  DType param_dtype = DType::kBF16;
  DType state_dtype = DType::kF32;  // every state array of the step: kF32 or kBF16
};

// Per-call scalars.
struct StepInfo {
  std::int64_t step = 1;    // 1 on the first step (the count after this step, as torch's state.step)
  double grad_scale = 1.0;  // multiplies every gradient element: (1 / loss_scale) * clip coefficient
};

// torch::optim::AdamOptions / AdamWOptions. AdamW is decoupled_weight_decay = true (note
// torch's AdamW defaults weight_decay to 1e-2; here the default is 0 for both).
struct AdamHyper {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decoupled_weight_decay = false;
  bool amsgrad = false;
};

struct AdamState {
  void* exp_avg = nullptr;         // m, zero before the first step
  void* exp_avg_sq = nullptr;      // v, zero before the first step
  void* max_exp_avg_sq = nullptr;  // amsgrad only
};

// torch::optim::SGDOptions.
struct SgdHyper {
  double lr = 1e-2;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

// torch::optim::AdagradOptions. initial_accumulator_value is the caller's fill of `sum`
// before the first step (cast.h: fill).
struct AdagradHyper {
  double lr = 1e-2;
  double lr_decay = 0.0;
  double weight_decay = 0.0;
  double eps = 1e-10;
};

Status adam_step(const StepShard& shard, const AdamState& state, const AdamHyper& hyper, const StepInfo& info,
                 ThreadPool* pool = nullptr);

// momentum_buffer may be nullptr when hyper.momentum == 0. On step 1 it is overwritten
// (torch clones the gradient into a fresh buffer), so it need not be initialized.
Status sgd_step(const StepShard& shard, void* momentum_buffer, const SgdHyper& hyper, const StepInfo& info,
                ThreadPool* pool = nullptr);

Status adagrad_step(const StepShard& shard, void* sum, const AdagradHyper& hyper, const StepInfo& info,
                    ThreadPool* pool = nullptr);

// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): one state,
// the momentum m, and an update of the same size for every element (lr * sign).
// Decoupled weight decay, as AdamW's. These defaults are the paper's advice (an lr 3-10x
// below AdamW's, beta2 = 0.99); a config's optimizer block defaults as DeepSpeed's does.
struct LionHyper {
  double lr = 1e-4;
  double beta1 = 0.9;
  double beta2 = 0.99;
  double weight_decay = 0.0;
};

// exp_avg: m, zero before the first step.
Status lion_step(const StepShard& shard, void* exp_avg, const LionHyper& hyper, const StepInfo& info,
                 ThreadPool* pool = nullptr);

// Lamb (You et al. 2020, "Large Batch Optimization for Deep Learning"), as DeepSpeed's
// FusedLamb steps one parameter tensor (its config type "Lamb"):
//   m = b1*m + (1-b1)*g; v = b2*v + ((1-b2)*g)*g; u = m / (sqrt(v) + eps) + wd*p
//   ratio = clamp(||p|| / ||u||, min_coeff, max_coeff), or 1 when either norm is 0
//   p += -(step_size * ratio) * u,  step_size = lr * sqrt(bc2) / bc1 (lr without bias_correction)
// u takes the moments uncorrected; the correction is in step_size, outside the ratio,
// as DeepSpeed's kernel has it (the paper corrects the moments inside u).
//
// The ratio is one per parameter tensor, and a parameter's elements may lie in several
// shards on several ranks, so a step is two passes over the state: lamb_moments over
// every piece (m and v updated, the piece's sums of p^2 and u^2 returned, p untouched);
// the caller adds each parameter's sums across its pieces and ranks and takes
// lamb_ratio; then lamb_apply over every piece recomputes u from the new m and v (the
// same operations, so the same bits) and steps the master and its compute copy.
// u is computed from m and v as stored, so with bf16 states the norm is that of the
// update applied. Padding (p = m = v = 0) adds nothing to either sum.
struct LambHyper {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  double max_coeff = 10.0;
  double min_coeff = 0.01;
  bool bias_correction = true;
};

// Sums of squares over one piece (or, added, over a whole parameter).
struct LambSums {
  double p_sq = 0;  // of the master before the step
  double u_sq = 0;  // of the update u
  void merge(const LambSums& o) {
    p_sq += o.p_sq;
    u_sq += o.u_sq;
  }
};

// shard.param is not written (the step happens in lamb_apply); grad_scale applies.
Result<LambSums> lamb_moments(const StepShard& shard, const AdamState& state, const LambHyper& hyper,
                              const StepInfo& info, ThreadPool* pool = nullptr);
// The trust ratio of a parameter whose sums over all its elements are `whole`.
double lamb_ratio(const LambSums& whole, const LambHyper& hyper);
// shard.grad is not read (may be null); the master and shard.param are written.
Status lamb_apply(const StepShard& shard, const AdamState& state, const LambHyper& hyper, const StepInfo& info,
                  double ratio, ThreadPool* pool = nullptr);

}  // namespace strata::kernels
