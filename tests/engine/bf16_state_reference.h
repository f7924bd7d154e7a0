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

// bf16 state against the reference rounded alike: both round fp32 values that can
// differ by an fp32 rounding (sharded gradients are summed in another order), so an
// element's m or v can land one bf16 step (2^-8) apart now and then, and its parameter
// about lr * 2^-8 apart. Measured: 1e-7 at world sizes 1 and 2 (no such flip); 1.25e-4
// after one flip. bf16 state is 2.4e-3 (Adam) and 1.5e-3 (AdamW) away from fp32 state
// after 20 steps; SGD's momentum much less, so the bf16-state cases use Adam or AdamW.
inline constexpr double kBf16StateTol = 2e-4;

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
