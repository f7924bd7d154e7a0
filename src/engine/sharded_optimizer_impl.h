// Private state of ShardedOptimizer, shared by its .cpp files.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "grad_reducer.h"
#include "shard_state.h"
#include "strata/base/thread_pool.h"
#include "strata/engine/sharded_optimizer.h"
#include "strata/kernels/grad_prologue.h"

namespace strata::engine {

struct ShardedOptimizer::Impl {
  StepKernel kernel;
  std::unique_ptr<GradReducer> reducer;
  std::vector<ShardState> shards;                       // per chunk: this rank's master + states
  std::vector<std::vector<ChunkStore::ShardSlot>> slots;  // per chunk: params in this rank's shard
  ParamSteps param_steps;
  std::unique_ptr<ThreadPool> pool;
  std::optional<kernels::GradStats> stats;  // global stats of the current boundary
  std::optional<double> clip_coef;          // set by clip_grad_norm() for the current boundary
  std::unique_ptr<torch::optim::Optimizer> wrapped;
  std::vector<at::Tensor> wrapped_params;  // master shards as leaves of the wrapped optimizer

  Result<kernels::GradStats> global_stats(ChunkStore& store, comm::Communicator& comm, double inv_scale);
  // Runs the step on every shard with gradients scaled by grad_scale, then all-gathers
  // the updated compute-dtype shards into the full chunks.
  Status apply(ChunkStore& store, comm::Communicator& comm, double grad_scale);
  // All-gathers this rank's slice of every compute chunk into the full chunks, first
  // casting the master shards into those slices when cast_masters is set.
  Status gather_params(ChunkStore& store, comm::Communicator& comm, bool cast_masters);
};

}  // namespace strata::engine
