// ShardedOptimizer: ZeRO stages 1 and 2 over LibTorch parameters (and stage 0, plain
// data parallelism, as the baseline they are measured against).
//
//   STRATA_ASSIGN_OR_RETURN(auto comm, strata::comm::init_from_env());
//   STRATA_ASSIGN_OR_RETURN(auto opts, ShardedOptimizerOptions::from_config(cfg));  // stage 1 or 2
//   STRATA_ASSIGN_OR_RETURN(auto opt, ShardedOptimizer::create(model->parameters(), *comm, opts));
//   for (auto& batch : batches) {                 // one micro-batch per iteration
//     at::Tensor loss = model->loss(batch.tokens, batch.targets);
//     STRATA_RETURN_IF_ERROR(opt->backward(loss));  // scales by loss scale / accumulation steps
//     STRATA_ASSIGN_OR_RETURN(StepResult r, opt->step());  // acts at the accumulation boundary
//   }
//
// Each rank keeps the fp32 master weights and the optimizer state (m, v, ...) of its
// shard of every chunk only (ChunkStore). Model parameters stay full size on every rank,
// in the compute dtype (fp32, or bf16/fp16 with mixed precision).
//   stage 1: at the boundary, gradients are all-reduced (avg) and each rank reads its slice.
//   stage 2: gradients are reduce-scattered (avg) into shard-size buffers, in buckets of
//            reduce_bucket_size elements, launched from the AccumulateGrad hooks as chunks
//            complete during the boundary micro-step's backward (overlap_comm), or at its end.
// Then: one gradient prologue (unscale, inf/NaN check, norm partials) all-reduced across
// ranks, dynamic loss scaling (an overflow skips the step on every rank), clipping folded
// into the fused step kernel, and an all-gather of the updated compute-dtype shards.
//
// Instead of the fused kernels, any torch::optim optimizer can run the step, built over
// the fp32 master shards (one tensor per chunk) by a factory (FairScale OSS's "wrap any
// optimizer"). Elementwise optimizers then behave exactly as unsharded.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "strata/base/config.h"
#include "strata/base/status.h"
#include "strata/engine/chunk_store.h"
#include "strata/engine/loss_scaler.h"

namespace torch::optim {
class Optimizer;
}
namespace strata {
class ThreadPool;
}
namespace strata::comm {
class Communicator;
}

namespace strata::engine {

using OptimizerFactory = std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<at::Tensor> shards)>;

struct ShardedOptimizerOptions {
  int stage = 1;  // 1 or 2; 0 = unsharded data parallel (the baseline)
  OptimizerConfig optimizer;
  Fp16Config fp16;             // loss scaling (dynamic when fp16.loss_scale == 0)
  at::ScalarType compute_dtype = at::kFloat;
  double gradient_clipping = 0.0;  // max L2 norm; 0 = off
  int gradient_accumulation_steps = 1;
  std::uint64_t reduce_bucket_size = 500'000'000;  // elements
  bool overlap_comm = true;
  int optimizer_threads = 0;  // 0 = one per core
  ChunkStoreOptions chunks;   // world and rank are filled in from the communicator
  OptimizerFactory wrap;      // set: run this torch::optim optimizer instead of the fused kernels

  // Stage, optimizer, precision and buckets from a strata::Config.
  static Result<ShardedOptimizerOptions> from_config(const Config& cfg);
  Status validate() const;
};

struct StepResult {
  bool boundary = false;    // false: a micro-step inside gradient accumulation
  bool applied = false;     // false at a boundary: overflow, step skipped on every rank
  double grad_norm = 0.0;   // global L2 norm of the unscaled gradient (before clipping)
  double loss_scale = 1.0;  // the scale used for this step's gradients
  std::int64_t step = 0;    // optimizer steps applied so far
};

class ShardedOptimizer {
 public:
  static Result<std::unique_ptr<ShardedOptimizer>> create(std::vector<at::Tensor> params, comm::Communicator& comm,
                                                           ShardedOptimizerOptions options);
  ~ShardedOptimizer();

  // (loss * loss_scale / accumulation_steps).backward(), knowing whether this is the
  // boundary micro-step (stage 2 launches its reduce-scatters from inside it).
  Status backward(const at::Tensor& loss);
  // At the accumulation boundary: reduce, check, clip, step, gather; zeroes the grads.
  // Inside the accumulation window it only counts the micro-step.
  Result<StepResult> step();

  // The global gradient norm of the given order (1, 2, or inf) over all shards, for the
  // gradients of the current boundary; as torch::nn::utils::clip_grad_norm_, it scales
  // the gradients to max_norm when above it and returns the norm before scaling. Call
  // between backward() and step() at a boundary; step() then applies the result.
  Result<double> clip_grad_norm(double max_norm, double norm_type = 2.0);

  // A torch::optim optimizer of the configured type over full-size fp32 copies of the
  // parameters (the master weights), its state filled from every rank's shards: the
  // whole optimizer in torch::optim's format, on `to_rank` (nullptr elsewhere). Every
  // rank must call it. Fused kernels only.
  Result<std::unique_ptr<torch::optim::Optimizer>> consolidate_state_dict(int to_rank);
  // Loads a consolidated optimizer (any world size) into this rank's shards: the state
  // from its per-parameter entries and the master weights from its parameters.
  Status load_state_dict(torch::optim::Optimizer& full);

  // Full fp32 parameters from the master shards, in store().params() order, on every
  // rank (checkpoints, samples). Every rank must call it.
  Result<std::vector<at::Tensor>> consolidated_params();
  double lr() const;
  void set_lr(double lr);

  ChunkStore& store() { return *store_; }
  const LossScaler& loss_scaler() const { return scaler_; }
  std::int64_t steps() const { return step_count_; }
  bool at_boundary() const;
  // Bytes of optimizer state (master + states) this rank holds.
  std::uint64_t state_bytes() const;

 private:
  ShardedOptimizer(comm::Communicator& comm, ShardedOptimizerOptions options);
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::unique_ptr<ChunkStore> store_;
  comm::Communicator& comm_;
  ShardedOptimizerOptions options_;
  LossScaler scaler_;
  std::int64_t micro_step_ = 0;
  std::int64_t step_count_ = 0;
};

}  // namespace strata::engine
