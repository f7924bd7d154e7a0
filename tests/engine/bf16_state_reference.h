// The reference for bf16 optimizer state (strata.optimizer_state_dtype bf16): plain
// torch::optim with each state tensor rounded to bf16 after its step, and how close the
// engine must come to it.
#pragma once

#include <ATen/ATen.h>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/sgd.h>

namespace strata::testing {

// Note [bf16 state flips]: bf16 state against the reference rounded alike. Both round
// fp32 values that may differ in their last bits (the fused kernels and torch::optim
// agree to rounding, not bit for bit; sharded gradients may be summed in another order),
// so now and then an element's m or v lands one bf16 step (2^-8) away from the
// reference's, and from then on that element drifts by about lr * 2^-9 a step.
// Element-wise, that was 1e-7 where nothing flipped and 1.25e-4 after one late flip on
// the machines kBf16StateTol was set on; on an AVX-512 machine (2026-12-04) one flip at
// step 6 of 20 (AdamW, two ranks) took it from 5e-8 to 2.1e-4 by step 19, past that
// tolerance, and three ZeroOffloadParity cases failed there. A flip moves one
// element, while bf16 state against fp32 state moves every element, so the comparison
// that tells them apart is the whole model's relative L2 error: 1.9e-5 with that flip,
// 3e-8 without, against 6.2e-4 to 7.0e-4 between bf16 and fp32 state (zero_worker,
// whole_model_error). kBf16StateWholeTol leaves room for four such flips and is under a
// fifth of the bf16-to-fp32 distance, which zero_worker checks.
// kBf16StateTol: element-wise, for the tests that compare so (units_worker).
// bf16 state is 2.4e-3 (Adam) and 1.5e-3 (AdamW) away from fp32 state element-wise
// after 20 steps; SGD's momentum much less, so the bf16-state cases use Adam or AdamW.
inline constexpr double kBf16StateTol = 2e-4;
inline constexpr double kBf16StateWholeTol = 8e-5;

// What bf16 optimizer state holds: each state tensor of the reference rounded to bf16
// (to nearest even) after its step, the arithmetic in fp32 as before.
inline void round_state_to_bf16(torch::optim::Optimizer& opt) {
  auto round = [](const at::Tensor& t) {
    if (t.defined()) t.copy_(t.to(at::kBFloat16));
  };
  for (auto& [key, ps] : opt.state()) {
    if (auto* a = dynamic_cast<torch::optim::AdamParamState*>(ps.get())) round(a->exp_avg()), round(a->exp_avg_sq());
    else if (auto* w = dynamic_cast<torch::optim::AdamWParamState*>(ps.get())) round(w->exp_avg()), round(w->exp_avg_sq());
    else if (auto* g = dynamic_cast<torch::optim::SGDParamState*>(ps.get())) round(g->momentum_buffer());
    else if (auto* d = dynamic_cast<torch::optim::AdagradParamState*>(ps.get())) round(d->sum());
  }
}

}  // namespace strata::testing
