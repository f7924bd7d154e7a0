// OptimStateHolder: each chunk's fp32 master and optimizer state (m, v, ...), in the
// tier placement chose for it. Internal to src/engine.
//
// Compute and host state are tensors that live for good. nvme state lives in the swap
// store between steps, one record per tensor (optim_key(c, t): t = 0 the master, then
// StepKernel::state_names() order), and comes into host memory only around its step.
//
// Note [nvme optimizer state]: the step pipelines the records (with the chunk's
// gradient record when its gradients are on nvme, Note [gradients on nvme]). While chunk k is
// stepped, chunk k+1's records are being read (prefetch) and chunk k-1's written back
// (release); at most two chunks' reads and one older chunk's writes are in flight, so
// at most four chunks of state are in host memory at once, each accounted as a host
// "buffers" reservation while it exists.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "engine_core.h"
#include "shard_state.h"
#include "strata/io/swap_store.h"

namespace strata::engine {

class OptimStateHolder {
 public:
  OptimStateHolder(EngineCore& core, const StepKernel& kernel);
  ~OptimStateHolder();

  // Setup: chunk c's state in host memory, its master filled with the parameters' values.
  void set_initial(std::uint32_t c, ShardState s) { mem_[c] = std::move(s); }
  // Moves chunk c's initial state to its tier and reserves it there (nvme: written to
  // its records, then dropped from memory).
  Status materialize(std::uint32_t c);
  // The swap records nvme state needs, for SwapStore::reserve().
  void add_records(std::uint32_t c, std::vector<io::SwapReservation>& out) const;
  // Master + state bytes this rank holds, all tiers.
  std::uint64_t bytes() const;

  // The step pipeline (Note [nvme optimizer state]).
  Status prefetch(std::uint32_t c);          // nvme: start reading c's records
  Result<ShardState*> acquire(std::uint32_t c);  // c's state in memory (waits for its read)
  const at::Tensor& grad(std::uint32_t c) const;  // after acquire(c): its gradient read from nvme
  Status release(std::uint32_t c);           // after c's step: nvme: start writing back
  Status flush();                            // every write-back finished

  // Outside the step (consolidation, loading a state dict): c's state in host memory,
  // read from any tier (for memory tiers, the tensors themselves), and back.
  Result<ShardState> read(std::uint32_t c);
  Status write(std::uint32_t c, const ShardState& s);

 private:
  struct Swap {
    ShardState state;
    at::Tensor grad;             // the step's gradient shard, when it is on nvme
    std::vector<io::SwapHandle> io;
    tiers::Reservation staging;  // declared after io: released once the I/O has finished
    tiers::Reservation grad_res;
  };
  bool on_nvme(std::uint32_t c) const;
  Result<std::unique_ptr<Swap>> start_read(std::uint32_t c, bool with_grad);
  std::vector<at::Tensor*> tensors(ShardState& s) const;

  EngineCore& core_;
  const StepKernel& kernel_;
  std::vector<ShardState> mem_;  // compute/host state; the initial state before nvme placement
  std::vector<tiers::Reservation> res_;
  std::map<std::uint32_t, std::unique_ptr<Swap>> reading_;  // prefetched or being stepped
  std::vector<std::unique_ptr<Swap>> writing_;             // write-backs in flight, oldest first
};

}  // namespace strata::engine
