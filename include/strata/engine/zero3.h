// Zero3Engine: ZeRO stage 3 — parameters sharded in chunks, gathered just in time,
// prefetched from the recorded trace, each shard placed in a memory tier.
//
//   nn::GPT model(cfg);  model->init_weights(seed);
//   STRATA_ASSIGN_OR_RETURN(auto opts, engine::Zero3Options::from_config(config, comm->world()));
//   STRATA_ASSIGN_OR_RETURN(auto eng, strata::shard(model, *comm, opts));   // units: default_units(model)
//   for (...) {
//     at::Tensor loss = model->loss(x, y);             // units gather/release around forward
//     STRATA_RETURN_IF_ERROR(eng->backward(loss));      // re-gather, reduce-scatter grads
//     STRATA_ASSIGN_OR_RETURN(auto r, eng->step());     // fused step on this rank's shards
//     const engine::StepMetrics& m = eng->last_metrics();
//   }
//
// A unit is a module called through strata::engine::forward() (module_hooks.h); GPT's
// units are its embeddings, each block and its head. Around a unit's forward the engine
// gathers the unit's chunks (pre_forward) and, per the schedule, releases them
// (post_forward); it hooks the unit's output so that backward re-gathers the chunks
// before the unit's backward runs (pre-backward), and an AccumulateGrad hook on every
// parameter reduce-scatters a chunk's gradients into this rank's fp32 gradient shard
// as soon as they are all accumulated (post-backward).
//
// Step 1 records the access trace and fetches on demand. At its end the trace is frozen,
// its hash compared across ranks (a mismatch is an error), and the planner's schedule
// built; from step 2 the schedule drives prefetching (async gathers ahead of use within
// stage3_prefetch_bucket_size and stage3_max_live_parameters), releases (per
// stage3_max_reuse_distance) and evictions (furthest next use). If a step takes another
// path through the model, the trace is invalidated with one warning, fetching falls back
// to on demand (results are unchanged), and the trace is recorded again.
//
// Placement (strata.placement): `static` puts parameter shards and optimizer state in
// the tiers given by offload_param / offload_optimizer and strata.offload_*_frac;
// `auto` measures non-model memory per access during a warm-up step and keeps as many
// parameter shards in compute memory as the budget allows. On a CPU-only machine,
// strata.compute_budget makes compute a separate, smaller pool with real copies.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "strata/base/config.h"
#include "strata/base/status.h"
#include "strata/engine/chunk_store.h"
#include "strata/engine/module_hooks.h"
#include "strata/engine/sharded_optimizer.h"
#include "strata/io/swap_store.h"
#include "strata/plan/schedule.h"

namespace torch::nn {
class Module;
}
namespace strata::comm {
class Communicator;
}

namespace strata::engine {

struct Zero3Options {
  OptimizerConfig optimizer;
  Fp16Config fp16;
  at::ScalarType compute_dtype = at::kFloat;
  double gradient_clipping = 0.0;
  int gradient_accumulation_steps = 1;
  int optimizer_threads = 0;
  ChunkStoreOptions chunks;          // world/rank filled in from the communicator
  plan::ScheduleOptions schedule;    // prefetch bucket, max live, reuse distance, budgets
  Placement placement = Placement::kStatic;
  OffloadDevice param_device = OffloadDevice::kNone;  // where parameter shards live
  OffloadDevice optim_device = OffloadDevice::kNone;  // where master + optimizer state live
  double offload_param_frac = 0.0;   // static: share of chunks whose param shard is off compute
  double offload_optim_frac = 0.0;   // static: share of chunks whose optimizer state is off compute
  // For nvme offload: the swap store (nvme_path, job, aio, min_io_bytes); its rank is
  // filled in from the communicator.
  io::SwapStoreOptions swap;
  bool prefetch = true;              // false: on-demand fetching even with a trace

  static Result<Zero3Options> from_config(const Config& cfg, int world);
  Status validate() const;
};

// A unit of gathering: a module called through engine::forward(), plus any parameter
// it uses without registering it (GPT's head uses the token embedding).
struct UnitSpec {
  std::shared_ptr<torch::nn::Module> module;
  std::vector<at::Tensor> extra_params;
  std::string name;
};

// Every child module of `model` that holds parameters, with ModuleLists flattened.
std::vector<UnitSpec> default_units(torch::nn::Module& model);

struct StepMetrics {
  std::int64_t step = 0;
  plan::LinkBytes moved;           // measured bytes per link this step (this rank)
  plan::LinkBytes planned;         // the schedule's prediction (zero while on demand)
  plan::TierBytes peak{0, 0, 0};   // peak bytes held per tier this step
  std::uint64_t peak_gathered_bytes = 0;  // peak of gathered parameter bytes
  std::uint64_t gathers = 0;       // chunk gathers (persistent ones excluded)
  std::uint64_t prefetch_hits = 0; // gathers issued ahead and complete when needed
  double prefetch_hit_rate = 0.0;  // hits / gathers (0 when there were none)
  double gather_wait_s = 0.0;      // time blocked waiting for gathers
  double forward_s = 0.0, backward_s = 0.0, optimizer_s = 0.0;
  bool scheduled = false;          // the trace drove this step's fetching
  std::uint64_t trace_hash = 0;
  std::uint64_t trace_invalidations = 0;  // so far
};

class Zero3Engine : public ModuleHooks {
 public:
  static Result<std::unique_ptr<Zero3Engine>> create(std::vector<UnitSpec> units, comm::Communicator& comm,
                                                     Zero3Options options);
  ~Zero3Engine() override;

  Status backward(const at::Tensor& loss);
  Result<StepResult> step();
  // As ShardedOptimizer::clip_grad_norm: between backward() and step() at a boundary.
  Result<double> clip_grad_norm(double max_norm, double norm_type = 2.0);

  const StepMetrics& last_metrics() const;
  const ChunkStore& store() const;
  const plan::Schedule* schedule() const;  // null until the trace is frozen
  std::uint64_t shard_bytes() const;       // this rank's parameter shard bytes, all tiers
  // Bytes this rank holds now, [tier][kind] with kinds params, grads, optimizer state,
  // buffers (plan::StateKind order), from the tier reservations.
  std::array<std::array<std::uint64_t, 4>, 3> memory_by_kind() const;
  // Writes a Chrome/Perfetto trace of the next full step to `path` when it ends.
  void trace_next_step(std::string path);
  double lr() const;
  void set_lr(double lr);
  // Full fp32 parameters gathered from the master shards, in store().params() order, on
  // every rank (for checkpoints and samples). Every rank must call it.
  Result<std::vector<at::Tensor>> consolidated_params();

  // ModuleHooks
  void pre_forward(const torch::nn::Module& unit) override;
  void post_forward(const torch::nn::Module& unit, at::Tensor& output) override;

  struct Impl;

 private:
  explicit Zero3Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Shards `model` with its default units (or `units`) and installs the hooks.
Result<std::unique_ptr<Zero3Engine>> shard(torch::nn::Module& model, comm::Communicator& comm, Zero3Options options,
                                           std::vector<UnitSpec> units = {});

}  // namespace strata::engine
