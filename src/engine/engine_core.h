// EngineCore: what the engine's components share — options, the communicator, tier
// accounting, the swap store, the chunk runtime, hook errors, the step's metrics and
// trace. Internal to src/engine; each component holds a reference to it.
#pragma once

#include <chrono>
#include <memory>
#include <optional>

#include "chunk_runtime.h"
#include "hook_errors.h"
#include "storage_cache.h"
#include "strata/base/thread_pool.h"
#include "strata/comm/communicator.h"
#include "strata/engine/engine.h"
#include "strata/engine/step_trace.h"
#include "strata/tiers/tier_allocator.h"

namespace strata::engine {

using Clock = std::chrono::steady_clock;

struct EngineCore {
  EngineCore(EngineOptions options, comm::Communicator& communicator)
      : opt(std::move(options)), comm(communicator), tiers(opt.schedule.budget_bytes) {}

  EngineOptions opt;  // validated; schedule.world and swap.rank filled in
  comm::Communicator& comm;
  tiers::TierAllocator tiers;  // before everything that reserves
  std::unique_ptr<io::SwapStore> swap;  // opened by placement when a chunk has nvme state
  tiers::Reservation swap_pool_res;     // the swap store's own staging pool, in host "buffers"
  std::unique_ptr<ThreadPool> pool;
  StorageCache storage{tiers};  // bytes of gathered chunks and gradient buffers (Note [storage cache])
  std::unique_ptr<ChunkRuntime> chunks;
  HookErrors errors;
  StepMetrics cur;   // the step in progress
  StepTrace trace;

  int stage() const { return opt.stage; }
  // The world the chunks are sharded over: 1 at stage 0 (every rank holds everything).
  int chunk_world() const { return opt.stage == 0 ? 1 : comm.world(); }
  bool sharded_params() const { return opt.stage == 3; }
  // A copy between tiers, on the links the cost model says it crosses.
  void account(Tier from, Tier to, std::uint64_t bytes) { plan::add_copy(cur.moved, from, to, bytes); }
};

}  // namespace strata::engine
