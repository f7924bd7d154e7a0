// What the units_worker modes share (units_worker.cpp, units_worker_bigtier.cpp).
#pragma once

#include <string>

#include <ATen/ATen.h>
#include <torch/optim/sgd.h>

#include "strata/engine/engine.h"
#include "support/worker.h"

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

// units_worker bigtier CASE (units_worker_bigtier.cpp).
void bigtier(const std::string& which);

}  // namespace strata::testing::units
