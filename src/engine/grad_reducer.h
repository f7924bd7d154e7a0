// GradReducer: turns the full-size gradient chunks of one backward into this rank's
// gradient shards, for ZeRO stages 1 and 2. Internal to src/engine.
//
// Hooks: an AccumulateGrad post hook on every parameter marks it as having a gradient
// in this backward. In stage 2, at the accumulation boundary, a chunk whose parameters
// have all reported is ready; buckets (fixed groups of chunks of up to bucket_elems,
// in reverse chunk order, which is roughly the order backward completes them) are
// launched as soon as they and every earlier bucket are ready. Launching strictly in
// bucket order keeps the collective order identical on every rank even if backward
// finishes chunks in a different order. A callback queued on the autograd engine
// launches whatever remains when backward ends (parameters unused in this backward).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "strata/base/status.h"
#include "strata/comm/communicator.h"
#include "strata/engine/chunk_store.h"

namespace torch::autograd {
struct Node;
}

namespace strata::engine {

class GradReducer {
 public:
  GradReducer(ChunkStore& store, comm::Communicator& comm, int stage, std::uint64_t bucket_elems, bool overlap);
  ~GradReducer();

  // Installs the AccumulateGrad hooks; call once, after the store rebound the params.
  void install_hooks();
  // Before each backward: whether it is the boundary micro-step.
  void begin_backward(bool boundary);
  // At the boundary, after backward: makes every gradient shard final (launching what
  // is left and waiting). Idempotent until reset().
  Status finish();
  // This rank's gradient shard of chunk c (compute dtype), valid after finish().
  const at::Tensor& grad_shard(std::size_t c) const { return grad_shards_[c]; }
  // Which parameters received a gradient in any backward since reset().
  const std::vector<std::uint8_t>& had_grad() const { return had_grad_; }
  // After the step: zero the gradients and forget the reductions.
  void reset();

  // Called from the hooks.
  void on_grad_ready(std::uint32_t param);
  void on_backward_end();

 private:
  struct Bucket {
    std::vector<std::size_t> chunks;
    std::int64_t elems = 0;
    at::Tensor staging_in, staging_out;  // rank-major copies, multi-chunk buckets only
    comm::Handle handle;
    bool launched = false;
  };
  void launch_ready_buckets(bool force);
  void launch(Bucket& b);

  ChunkStore& store_;
  comm::Communicator& comm_;
  int stage_;
  bool overlap_;
  bool boundary_ = false;
  bool callback_queued_ = false;
  bool finished_ = false;
  std::vector<at::Tensor> grad_shards_;
  std::vector<std::uint8_t> had_grad_;
  std::vector<std::uint8_t> reported_;      // per param, this backward
  std::vector<std::int64_t> pending_;       // per chunk: params not yet reported
  std::vector<std::size_t> bucket_of_;      // per chunk
  std::vector<Bucket> buckets_;
  std::size_t next_bucket_ = 0;
  std::vector<comm::Handle> allreduces_;    // stage 1
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;
  Status hook_error_;
};

}  // namespace strata::engine
