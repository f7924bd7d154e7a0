// ChunkRuntime: what the engine knows about each chunk at run time — its state, where
// its parameter shard lives, its gathered storage and the reservations that account
// for them. Internal to src/engine.
//
// A chunk's residency is fixed at setup (Note [residency rules] in plan/schedule.h):
//   sharded     stage 3: gathered for the units that use it, released after, by the
//               schedule or on demand
//   persistent  stage 3: gathered at the start of a step and kept until the step
//   aliased     stage 3, world 1, shard on compute: the shard is the whole chunk
//   replicated  stages 0-2: every rank holds the whole chunk for good; this rank's
//               slice of it is its shard, which the step updates
// Only sharded and persistent chunks move between FREE and gathered states; aliased and
// replicated ones stay in HOLD.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "io_tensor.h"
#include "storage_cache.h"
#include "strata/engine/chunk_state.h"
#include "strata/engine/chunk_store.h"
#include "strata/io/swap_store.h"
#include "strata/plan/schedule.h"
#include "strata/tiers/tier_allocator.h"

namespace strata::engine {

using plan::StateKind;
using plan::Tier;

enum class Residency : std::uint8_t { kSharded, kPersistent, kAliased, kReplicated };

struct ChunkRt {
  ChunkStateMachine sm;
  Residency residency = Residency::kSharded;
  bool trainable = false;          // fixed at setup: holds a parameter that requires grad
  Tier shard_tier = Tier::kCompute;
  Tier optim_tier = Tier::kCompute;
  bool grads_on_nvme = false;      // Note [gradients on nvme] (grad_reducer.h)
  bool grads_on_compute = false;   // Note [gradients kept on compute] (grad_reducer.h)
  bool shard_from_master = false;  // Note [shard from master]: no shard tensor
  at::Tensor shard;                // this rank's shard (compute dtype); a view of the full
                                   // chunk when aliased or replicated; empty on nvme and
                                   // when made from the master
  tiers::Reservation shard_res;    // the shard (replicated: the whole chunk it lives in)
  tiers::Reservation gathered_res; // the gathered copy, while gathered

  bool always_gathered() const { return residency == Residency::kAliased || residency == Residency::kReplicated; }
};

class ChunkRuntime {
 public:
  // `replicated`: stages 0-2. `optim_bytes_per_elem`: the optimizer's bytes per shard
  // element, the fp32 master and every state tensor; `grad_bytes_per_elem`: the gradient
  // shard's (fp32 or bf16). `sched` (world, persistence threshold) and `swap` (the
  // engine's swap store, opened after placement) belong to the engine and outlive the
  // runtime.
  ChunkRuntime(std::unique_ptr<ChunkStore> store, bool replicated, std::uint64_t optim_bytes_per_elem,
               std::uint64_t grad_bytes_per_elem, const plan::ScheduleOptions& sched, tiers::TierAllocator& tiers,
               StorageCache& storage, const std::unique_ptr<io::SwapStore>& swap);

  ChunkStore& store() { return *store_; }
  const ChunkStore& store() const { return *store_; }
  std::uint32_t size() const { return static_cast<std::uint32_t>(rt_.size()); }
  ChunkRt& operator[](std::uint32_t c) { return rt_[c]; }
  const ChunkRt& operator[](std::uint32_t c) const { return rt_[c]; }
  // The parameters in this rank's shard of chunk c.
  const std::vector<ChunkStore::ShardSlot>& slots(std::uint32_t c) const { return slots_[c]; }
  std::string name(std::uint32_t c) const;
  Tier step_tier(std::uint32_t c) const { return plan::step_tier(rt_[c].optim_tier); }
  // The device a tier's tensors live on: the compute device for the compute tier (a
  // GPU's memory), else host memory.
  c10::Device device_of(Tier t) const { return t == Tier::kCompute ? store_->options().device : c10::Device(c10::kCPU); }
  std::uint64_t full_bytes(std::uint32_t c) const;
  std::uint64_t shard_bytes(std::uint32_t c) const;
  // The most elements in this rank's shard of any chunk `which` picks (0 if none): the
  // size of a staging buffer that any of them fits.
  std::int64_t largest_shard_elems(const std::function<bool(const ChunkRt&)>& which) const;
  // The planner's view of chunk c (sizes, tiers, residency).
  plan::ScheduleChunk schedule_chunk(std::uint32_t c) const;
  std::vector<plan::ScheduleChunk> schedule_chunks() const;

  // Reserves bytes in a tier for chunk c, naming it "<what> chunk <c>".
  Result<tiers::Reservation> reserve(Tier t, std::uint64_t bytes, StateKind kind, std::uint32_t c,
                                     std::string_view what);

  // Parameter shards on nvme: one record per chunk. Any tensor of the shard's size;
  // an unaligned one goes through an aligned bounce tensor (io_tensor.h).
  Status load_shard(std::uint32_t c, const at::Tensor& dst);
  Status store_shard(std::uint32_t c, const at::Tensor& src);

  // Sets chunk c's residency from its tiers by the planner's rules.
  void decide_residency(std::uint32_t c);
  // Makes chunk c's placement real (its shard moves to shard_tier, reserved there).
  // Before: `shard` holds this rank's shard values in host memory (stage 3) or the full
  // chunk holds the values (replicated).
  Status materialize(std::uint32_t c);
  // auto placement: chunk c's shard moves from compute to host.
  Status move_shard_to_host(std::uint32_t c);

  // The full chunk's bytes back / gone (Note [gathered storage]).
  void alloc_full(std::uint32_t c);
  void free_full(std::uint32_t c);

 private:
  std::unique_ptr<ChunkStore> store_;
  bool replicated_;
  std::uint64_t optim_bytes_per_elem_;
  std::uint64_t grad_bytes_per_elem_;
  const plan::ScheduleOptions& sched_;
  tiers::TierAllocator& tiers_;
  StorageCache& storage_;
  const std::unique_ptr<io::SwapStore>& swap_;
  std::vector<ChunkRt> rt_;
  std::vector<std::vector<ChunkStore::ShardSlot>> slots_;
};

// The swap-store key of chunk c's parameter shard, and of sub-group g of its optimizer
// tensor t (0 = master, then the states in StepKernel::state_names() order).
io::SwapKey param_key(std::uint32_t c);
io::SwapKey optim_key(std::uint32_t c, std::uint32_t t, std::uint32_t g = 0);
// Sub-group g of chunk c's gradient shard on nvme (Note [gradients on nvme]).
io::SwapKey grad_key(std::uint32_t c, std::uint32_t g = 0);

}  // namespace strata::engine
