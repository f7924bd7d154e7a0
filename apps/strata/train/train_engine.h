// TrainEngine: one face over strata's two engines for the training loop — the sharded
// optimizer for stages 0-2 and the ZeRO-3 engine for stage 3.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "strata/base/config.h"
#include "strata/engine/sharded_optimizer.h"
#include "strata/engine/step_trace.h"
#include "strata/engine/zero3.h"
#include "strata/nn/models/gpt.h"

namespace strata::cli {

class TrainEngine {
 public:
  static Result<std::unique_ptr<TrainEngine>> create(nn::GPT& model, const Config& cfg, comm::Communicator& comm);

  Status backward(const at::Tensor& loss) { return z3_ ? z3_->backward(loss) : dp_->backward(loss); }
  Result<engine::StepResult> step() { return z3_ ? z3_->step() : dp_->step(); }
  void set_lr(double lr) { z3_ ? z3_->set_lr(lr) : dp_->set_lr(lr); }
  // fp32 parameters, keyed like model->named_parameters(); every rank must call it.
  Result<std::vector<std::pair<std::string, at::Tensor>>> consolidated_params();
  // Bytes held now per [tier][params, grads, optimizer, buffers].
  std::array<std::array<std::uint64_t, 4>, 3> memory_by_kind() const;
  const engine::ChunkStore& store() const { return z3_ ? z3_->store() : dp_->store(); }
  engine::Zero3Engine* zero3() { return z3_.get(); }
  // Chrome trace of the next step: the ZeRO-3 engine's own, or forward/backward/step spans.
  void trace_next_step(const std::string& path);
  engine::StepTrace& own_trace() { return trace_; }

 private:
  nn::GPT* model_ = nullptr;
  std::unique_ptr<engine::ShardedOptimizer> dp_;
  std::unique_ptr<engine::Zero3Engine> z3_;
  engine::StepTrace trace_;
  std::uint64_t elem_bytes_ = 4;
};

}  // namespace strata::cli
