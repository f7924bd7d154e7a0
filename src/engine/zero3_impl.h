// Private state of Zero3Engine, shared by its .cpp files. See zero3.h for the flow.
#pragma once

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include <ATen/core/Tensor.h>

#include "shard_state.h"
#include "strata/base/thread_pool.h"
#include "strata/comm/communicator.h"
#include "strata/engine/chunk_state.h"
#include "strata/engine/chunk_store.h"
#include "strata/engine/loss_scaler.h"
#include "strata/engine/step_trace.h"
#include "strata/engine/zero3.h"
#include "strata/io/swap_store.h"
#include "strata/kernels/grad_prologue.h"
#include "strata/plan/trace.h"
#include "strata/tiers/tier_allocator.h"

namespace torch::autograd {
struct Node;
}

namespace strata::engine {

using plan::Tier;
using Clock = std::chrono::steady_clock;

// Everything the engine knows about one chunk at run time.
struct ChunkRt {
  ChunkStateMachine sm;
  bool persistent = false;      // gathered once, never released
  bool aliased = false;         // world 1 with a compute shard: the full chunk is the shard
  bool trainable = false;       // holds a parameter that requires grad
  Tier shard_tier = Tier::kCompute;
  Tier optim_tier = Tier::kCompute;
  at::Tensor shard;             // this rank's parameter shard (compute dtype); empty on nvme
  tiers::Reservation shard_res, gathered_res, grad_res, optim_res, grad_shard_res;
  comm::Handle gather;          // in-flight gather
  bool gather_in_flight = false;
  bool prefetched = false;      // the in-flight or finished gather was issued ahead of use
  bool awaiting_use = false;    // gathered, not yet waited on by an access (hit accounting)
  Clock::time_point gather_issued;
  std::uint64_t last_used = 0;  // use_clock at the last wait: on-demand eviction is LRU
  // Backward: the full gradient buffer's life and the reduce-scatter into grad_shard.
  bool grad_live = false;
  std::int64_t grads_expected = 0;  // trainable parameters in the chunk
  std::int64_t grads_pending = 0;   // of those, not yet accumulated in this backward
  Clock::time_point rs_issued;
  at::Tensor rs_out;            // compute dtype [shard] reduce-scatter output
  comm::Handle rs;
  bool rs_in_flight = false;
  ShardState optim;             // fp32 master + states (empty tensors while on nvme)
  at::Tensor grad_shard;        // fp32 accumulator [shard], where the step runs
};

struct UnitRt {
  UnitSpec spec;
  int id = 0;
  std::vector<std::uint32_t> chunks;   // chunks holding the unit's parameters
  std::vector<std::uint32_t> params;   // indexes into the store's params
  std::vector<int> ancestors;          // units whose module contains this one
};

struct Zero3Engine::Impl {
  Zero3Options opt;
  comm::Communicator* comm = nullptr;
  tiers::TierAllocator tiers;  // before the chunks, whose reservations it accounts
  std::unique_ptr<ChunkStore> store;
  std::vector<ChunkRt> chunks;
  std::vector<std::vector<ChunkStore::ShardSlot>> slots;  // per chunk: params in this rank's shard
  std::vector<UnitRt> units;
  std::unordered_map<const torch::nn::Module*, int> unit_of;
  std::unique_ptr<io::SwapStore> swap;
  StepKernel kernel;
  LossScaler scaler;
  std::unique_ptr<ThreadPool> pool;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;
  ParamSteps param_steps;                     // identical on every rank
  std::vector<std::uint8_t> local_had_grad;   // this rank's AccumulateGrad calls, ever
  std::deque<std::uint32_t> rs_order;         // reduce-scatters in flight, in issue order

  // The trace and the schedule it drives.
  plan::AccessTrace trace;
  std::optional<plan::Schedule> schedule;
  std::vector<plan::ScheduleChunk> sched_chunks;
  bool in_step = false;                    // between the first forward access and step()
  bool in_backward = false;
  bool scheduled_step = false;             // this step follows the schedule (so far)
  std::int64_t micro_step = 0;
  std::int64_t step_count = 0;
  std::vector<std::uint64_t> access_activation_bytes;  // auto placement: measured per access
  std::uint64_t baseline_live_bytes = 0;

  std::vector<std::uint64_t> access_live_bytes;  // auto warm-up: non-model bytes per access
  std::vector<std::pair<int, std::optional<std::size_t>>> fwd_stack;  // open forward accesses
  // Open backward accesses, outermost first. A unit's backward has no end event; it ends
  // when a unit that is not nested in it begins (Note [nested backward]).
  std::vector<std::pair<int, std::optional<std::size_t>>> bwd_stack;
  Clock::time_point unit_t0;
  std::uint64_t use_clock = 0;

  // Metrics of the step in progress and of the last finished one.
  StepMetrics cur, last;
  Clock::time_point step_t0, backward_t0;
  std::uint64_t gathered_bytes = 0;
  std::optional<kernels::GradStats> stats;
  std::optional<double> clip_coef;
  StepTrace trace_out;

  // zero3_fetch.cpp
  void begin_step_if_needed();
  bool measuring_activations() const;
  std::uint64_t accounted_bytes() const;
  // Trace bookkeeping, schedule ops and gathers before unit u runs; returns the access's
  // index in the frozen trace when the schedule drives this step.
  std::optional<std::size_t> on_access(int unit, plan::Phase phase);
  // After unit u ran: its chunks leave COMPUTE; the schedule's post ops, or on-demand release.
  void finish_access(int unit, plan::Phase phase, std::optional<std::size_t> at);
  void run_ops(const std::vector<plan::Op>& ops, std::size_t at);
  void start_gather(std::uint32_t c, bool prefetch);
  void wait_gather(std::uint32_t c);
  void ensure_gathered(const std::vector<std::uint32_t>& chunks);
  void release(std::uint32_t c);
  tiers::Reservation reserve_compute(std::uint64_t bytes, const std::string& holder,
                                     const std::vector<std::uint32_t>& keep);
  void make_room(std::uint64_t bytes, const std::vector<std::uint32_t>& keep);
  std::vector<std::uint32_t> keep_for_gather(std::uint32_t c) const;
  // zero3_backward.cpp
  void install_grad_hooks();
  void ensure_grad_buffer(std::uint32_t c);
  void begin_unit_backward(int unit);
  void on_grad_ready(std::uint32_t param);
  void on_backward_end();
  void launch_reduce_scatter(std::uint32_t c);
  void finish_reduce_scatter(std::uint32_t c);
  void poll_reduce_scatters();  // finishes those already complete
  Status drain_reduce_scatters();
  // zero3_step.cpp
  struct StateSwap;
  Result<std::unique_ptr<StateSwap>> swap_in_state(std::uint32_t c);
  Result<kernels::GradStats> global_stats(double inv_scale);
  Status optimizer_step(double grad_scale);
  // Whether every parameter in this rank's shard of chunk c is stepped (none is frozen
  // or still without a gradient).
  bool steps_every_param(std::uint32_t c) const;
  Status end_trace_step();
  Result<plan::Schedule> plan_schedule(std::span<const plan::ModuleAccess> accesses);
  // zero3_placement.cpp
  Status place(const Zero3Options& o);
  void static_tiers(std::uint32_t c, std::size_t trainable_index, std::size_t n_trainable);
  Status materialize(std::uint32_t c);
  void refresh_schedule_chunks();
  std::vector<plan::ModuleAccess> provisional_trace() const;
  Status check_fits_provisional();
  Status fit_auto_placement();
  Status move_shard_to_host(std::uint32_t c);
  Status load_shard(std::uint32_t c, const at::Tensor& dst);   // param shard from nvme
  Status store_shard(std::uint32_t c, const at::Tensor& src);

  void account(Tier from, Tier to, std::uint64_t bytes);
  // Where chunk c's optimizer step runs: compute if its state is there, else host.
  Tier step_tier(std::uint32_t c) const {
    return chunks[c].optim_tier == Tier::kCompute ? Tier::kCompute : Tier::kHost;
  }
  std::string chunk_name(std::uint32_t c) const;
};

// Thrown from hooks (which cannot return a Status) and caught at backward()/step(); the
// message is the Error's text. LibTorch sees a c10::Error, as DESIGN §4 asks.
[[noreturn]] void throw_error(const Error& e);

}  // namespace strata::engine
