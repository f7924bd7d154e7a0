// What the units_worker modes share (units_worker.cpp, units_worker_bigtier.cpp,
// units_worker_nesting.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/sgd.h>

#include "strata/comm/torch_compat.h"
#include "strata/engine/engine.h"
#include "support/worker.h"
#include "toy_model.h"

namespace strata::testing::units {

// Small models of a few units: SGD with momentum, chunks of 512 elements.
inline engine::EngineOptions small_unit_options() {
  engine::EngineOptions o;
  // SGD, as in parity(): Adam turns gradients that are rounding noise into full steps.
  o.optimizer.type = OptimizerType::kSGD;
  o.optimizer.lr = 0.05;
  o.optimizer.momentum = 0.9;
  o.chunks.chunk_size_elems = 512;
  o.chunks.io_align_bytes = 64;
  o.schedule.prefetch_bucket_bytes = 1 << 20;
  return o;
}

// The state an engine with bf16 optimizer state keeps is bf16: the consolidated SGD
// momentum (widened to fp32) is bf16 values exactly, and not all zero. The parameters
// alone cannot tell: SGD's momentum in bf16 moves them too little (2.4e-6 after three
// steps of the 64 MiB case, measured with fp32 state against the rounded reference).
inline void check_bf16_momentum(engine::Engine& eng, const std::string& what) {
  auto full = check(eng.consolidate_state_dict(0), "consolidate_state_dict");
  if (worker_comm()->rank() != 0) return;
  bool moved = false;
  for (auto& [key, ps] : full->state()) {
    const at::Tensor m = dynamic_cast<torch::optim::SGDParamState&>(*ps).momentum_buffer();
    if (!at::equal(m, m.to(at::kBFloat16).to(at::kFloat))) fail(what + ": a momentum buffer is not bf16 values");
    moved = moved || m.abs().max().item<float>() > 0;
  }
  if (!moved) fail(what + ": no momentum at all");
}

// Trains a 16-in, 4-out model through `eng` on this rank's 4 rows and its reference in
// one process on the whole batch, with plain LibTorch; after every step the consolidated
// parameters must agree, and from step `scheduled_from` the schedule must drive it.
using ForwardFn = std::function<at::Tensor(const at::Tensor& x, int step)>;
inline void train_like_reference(engine::Engine& eng, const ForwardFn& live, const ForwardFn& plain,
                          torch::optim::Optimizer& ref_opt, const std::vector<at::Tensor>& ref_params, int steps,
                          std::uint64_t seed, int scheduled_from) {
  for (int s = 0; s < steps; ++s) {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed + static_cast<std::uint64_t>(s));
    at::Tensor x = at::randn({4 * worker_comm()->world(), 16}, g), y = at::randn({4 * worker_comm()->world(), 4}, g);
    at::Tensor mx = x.narrow(0, 4 * worker_comm()->rank(), 4), my = y.narrow(0, 4 * worker_comm()->rank(), 4);
    check(eng.backward(at::mse_loss(live(mx, s), my)), "backward");
    check(eng.step(), "step");
    strata::torch_compat::zero_grad_keep(ref_opt);
    at::mse_loss(plain(x, s), y).backward();
    ref_opt.step();
    auto got = check(eng.consolidated_params(), "consolidated");
    for (std::size_t i = 0; i < got.size(); ++i)
      if (const double e = rel_error(got[i], ref_params[i]); e > 1e-5)
        fail(fmt::format("step {}: param {} differs, relative error {:.3g}", s, i, e));
    if (s >= scheduled_from && !eng.last_metrics().scheduled) fail(fmt::format("step {} was not driven by the schedule", s));
  }
}

// units_worker bigtier CASE (units_worker_bigtier.cpp).
void bigtier(const std::string& which);
// units_worker nested, nested_tail (tail) and adopt (units_worker_nesting.cpp).
void nested(bool tail);
void adopt();
void routed();  // units_worker routed

}  // namespace strata::testing::units
