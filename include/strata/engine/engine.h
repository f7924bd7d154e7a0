// Engine: strata's one training engine, ZeRO stages 0-3, every tier at every stage.
//
//   STRATA_ASSIGN_OR_RETURN(auto o, engine::EngineOptions::from_config(cfg, comm->world()));
//   // C++ modules: strata::engine::shard() (module_hooks.h) builds the units and hooks.
//   STRATA_ASSIGN_OR_RETURN(auto eng, engine::shard(*model, *comm, o));
//   for (...) {
//     at::Tensor loss = model->loss(x, y);            // units gather around their forward
//     STRATA_RETURN_IF_ERROR(eng->backward(loss));     // scaled; re-gathers, reduces grads
//     STRATA_ASSIGN_OR_RETURN(auto r, eng->step());    // at the accumulation boundary
//   }
//
// Note [front ends]: the engine never sees a module type. A unit is an id (its index in
// the `units` given to create()) plus the parameter tensors it computes with; units may
// share tensors (a tied embedding) and nest (an outer unit's tensors include an inner
// unit's). A front end calls pre_forward(u) before unit u runs and post_forward(u,
// outputs) after it; post_forward hooks the outputs so that backward re-gathers the
// unit's chunks when the first gradient of an output arrives (any number of outputs,
// e.g. a tuple). Nesting is learned from the calls: a unit whose pre_forward comes while
// another is open runs inside it. Today's front end is the C++ one (engine::forward()).
//
// What each stage does is in engine_options.h. Step 1 of stage 3 records the access
// trace and fetches on demand; from step 2 the planner's schedule drives prefetching,
// releases and evictions (plan/schedule.h). Every byte of model state is a tier
// reservation that says its kind; errors raised inside autograd hooks reach backward()'s
// caller with their code (an over-budget gradient buffer is "resource_exhausted: cannot
// fit ...", not an internal error).
#pragma once

#include <array>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "strata/base/status.h"
#include "strata/engine/chunk_store.h"
#include "strata/engine/deferred_init.h"
#include "strata/engine/engine_options.h"
#include "strata/engine/loss_scaler.h"
#include "strata/plan/schedule.h"

namespace strata::comm {
class Communicator;
}

namespace strata::engine {

using UnitId = int;

struct UnitSpec {
  std::string name;                      // for messages and traces; "unit<i>" when empty
  std::vector<at::Tensor> params;        // the tensors the unit computes with
  std::vector<std::string> param_names;  // optional, one per param: names in errors
  // A leaf module's unit: the units its forward calls whose parameters it holds are
  // gathered with it, as no accesses of their own, and may differ across ranks (Note
  // [covered units] in src/engine/access_driver.h; set_z3_leaf_modules in DeepSpeed).
  bool leaf = false;
};

struct StepResult {
  bool boundary = false;    // false: a micro-step inside gradient accumulation
  bool applied = false;     // false at a boundary: overflow, step skipped on every rank
  double grad_norm = 0.0;   // global L2 norm of the unscaled gradient (before clipping)
  double loss_scale = 1.0;  // the scale used for this step's gradients
  std::int64_t step = 0;    // optimizer steps applied so far
};

// One optimizer step's figures on this rank (micro-steps included).
struct StepMetrics {
  std::int64_t step = 0;
  plan::LinkBytes moved;           // measured bytes per link
  plan::LinkBytes planned;         // the schedule's prediction (zero while on demand)
  plan::TierBytes peak{0, 0, 0};   // peak bytes held per tier
  std::uint64_t peak_grad_bytes = 0;      // peak gradient bytes (buffers and shards), summed over tiers
  std::uint64_t peak_gathered_bytes = 0;  // peak of gathered parameter bytes (stage 3)
  std::uint64_t gathers = 0;       // chunk gathers (persistent ones excluded)
  std::uint64_t prefetch_hits = 0; // gathers issued ahead and complete when needed
  double prefetch_hit_rate = 0.0;  // hits / gathers (0 when there were none)
  double gather_wait_s = 0.0;      // time blocked waiting for gathers
  double forward_s = 0.0, backward_s = 0.0, optimizer_s = 0.0;
  plan::LinkBytes optimizer_moved;  // nvme links only: the part of `moved` inside step()
  bool scheduled = false;          // the trace drove this step's fetching
  std::uint64_t trace_hash = 0;
  std::uint64_t trace_invalidations = 0;  // so far
};

// Engine::backward's arguments beyond the loss: DeepSpeed's engine.backward(loss,
// retain_graph=False, scale_wrt_gas=True).
struct BackwardOptions {
  bool retain_graph = false;    // keep the graph for another backward through it (not at
                                // stage 3, where a forward takes one backward)
  bool scale_by_window = true;  // divide the loss by gradient_accumulation_steps (DeepSpeed's
                                // scale_wrt_gas): false when the caller has divided it
};

// Bytes held per [tier][kind], plan::StateKind order: params, grads, optimizer, buffers.
using MemoryByKind = std::array<std::array<std::uint64_t, plan::kNumStateKinds>, plan::kNumTiers>;

class Engine {
 public:
  // Parameters are taken from the units, each distinct tensor once. Stages 0-2 never
  // gather, so their units matter only for the parameters they list. Parameters may be
  // deferred (no bytes yet): `init` makes their values, chunk by chunk, as setup moves
  // each chunk to its tier (Note [streaming setup] in engine.cpp).
  static Result<std::unique_ptr<Engine>> create(std::vector<UnitSpec> units, comm::Communicator& comm,
                                                EngineOptions options, ParamInit init = {});
  // Every parameter in one unit (duplicates are the same parameter, taken once).
  static Result<std::unique_ptr<Engine>> create(std::vector<at::Tensor> params, comm::Communicator& comm,
                                                EngineOptions options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Front-end hooks (Note [front ends]).
  Status pre_forward(UnitId unit);
  Status post_forward(UnitId unit, std::span<const at::Tensor> outputs);
  // The model's forward raised: the units it entered and never left end here, so their
  // chunks are not held past the step (Note [a forward that raised]). Front ends call it
  // where they see the exception, and before the outermost unit's forward.
  Status abort_forward();
  // Stage 3: `param` is used in the forward of a unit that does not hold it (a module
  // that reads a child's weight, a tied head): the innermost unit whose forward is open
  // takes it, gathered now and by its every later access (Note [adopted parameters] in
  // src/engine/access_driver.h). False when no unit's forward is open (the parameter is
  // read between steps) or at stages 0-2, where parameters always hold their values.
  Result<bool> adopt_param(const at::Tensor& param);

  // (loss * loss_scale / accumulation_steps).backward(), with the engine's hooks.
  Status backward(const at::Tensor& loss, const BackwardOptions& options = {});
  // When backward() failed because the model's own backward raised (a custom autograd
  // Function, a dtype mismatch in the caller's graph) rather than strata, that exception
  // (once; else null). A front end rethrows it, so its caller gets what a plain
  // loss.backward() raises, type and all; backward()'s error names it for C++ callers
  // (Note [the model's exceptions] in engine.cpp).
  std::exception_ptr take_backward_exception();
  // At the accumulation boundary: finish the reduction, check, clip, step, and bring
  // the parameters up to date. Inside the accumulation window it only counts.
  Result<StepResult> step();
  // Discards the gradients of the backwards that no step() has counted since the last
  // one (a GAN's generator backward through the discriminator's engine), as torch's
  // zero_grad(); the micro-steps of an accumulation window that step() counted stay, so
  // calling it before every backward is harmless (Note [zero_grad] in engine.cpp).
  Status zero_grad();
  // The global gradient norm of order 1, 2 or inf; as torch's clip_grad_norm_, the next
  // step() scales the gradients to max_norm when above it. Between backward() and step()
  // at a boundary.
  Result<double> clip_grad_norm(double max_norm, double norm_type = 2.0);

  // Full fp32 values of every parameter, in params() order, on every rank (every rank
  // must call it): the master weights of trained parameters, frozen ones as they are.
  Result<std::vector<at::Tensor>> consolidated_params();
  // Note [gathered parameters] (state_dict.cpp), DeepSpeed's GatheredParameters: the full
  // fp32 values of `params` (the engine's parameter tensors) on every rank, for reading
  // or editing outside forward; every rank calls it with the same parameters. Until
  // release_params(), forward and step() are refused. release_params takes `values`
  // (full, any float dtype, one per parameter; none: nothing changes) into the
  // parameters' masters and shards on this rank, as an in-place edit is taken (Note
  // [edited parameters]); it issues no collective.
  Result<std::vector<at::Tensor>> gather_params(std::span<const at::Tensor> params);
  Status release_params(std::span<const at::Tensor> params, std::span<const at::Tensor> values);
  // A torch::optim optimizer of the configured type over full fp32 copies of the
  // trainable parameters, its state filled from every rank's shards, on `to_rank`
  // (nullptr elsewhere); one group per parameter group, with its current lr and weight
  // decay and the current betas or momentum. Every rank must call it. Fused kernels only.
  Result<std::unique_ptr<torch::optim::Optimizer>> consolidate_state_dict(int to_rank);
  // Loads a consolidated optimizer (saved at any world size) into this rank's shards, and
  // takes its groups' lrs. The engine keeps its own weight decays, betas and momentum:
  // LibTorch's torch::load fills an optimizer's state but leaves its groups' options as
  // the constructor made them, so taking them would take defaults (set_group_weight_decays,
  // set_betas and set_momentum set them). Every rank must call it (at stages 1-2 a
  // written shard is gathered). Checks every parameter's state before changing anything,
  // then loads a chunk at a time: one chunk's shard state in memory besides `full`.
  Status load_state_dict(torch::optim::Optimizer& full);

  // Checkpoints (strata/ckpt/checkpoint.h; format: docs/checkpoints.md). Every rank calls
  // them. save_checkpoint writes root/step-<step> (-1: the optimizer steps applied) and
  // points root/latest at it; load_checkpoint takes a step-N directory or a root (its
  // latest), saved at any world size, stage or chunk size, and returns the saved step.
  // For keep, config, the caller's own state or weights only, use ckpt::save_checkpoint
  // and ckpt::load_checkpoint. Defined in src/ckpt, the layer above: the engine does not
  // know the format (Note [checkpoint access]).
  Result<std::filesystem::path> save_checkpoint(const std::filesystem::path& root, std::int64_t step = -1);
  Result<std::int64_t> load_checkpoint(const std::filesystem::path& path);

  // Note [checkpoint access]: what strata::ckpt saves and loads, without the engine
  // knowing the checkpoint format. The chunks are sharded over shard_world() ranks
  // (1 at stage 0, where every rank holds everything); this rank holds elements
  // [shard_rank() * store().shard_elems(c), ...+ shard_elems(c)) of every chunk c.
  struct ShardTensors {
    at::Tensor master;               // fp32: a trainable chunk's master shard
    std::vector<at::Tensor> states;  // fp32, state_names() order: its optimizer state
    at::Tensor values;               // fp32: a frozen chunk's parameter values
  };
  int shard_world() const;
  int shard_rank() const;
  bool chunk_trains(std::uint32_t c) const;  // has a master and optimizer state
  const std::vector<std::string>& state_names() const;
  std::string optimizer_name() const;
  // This rank's shard of chunk c, read from whatever tier holds it (one chunk at a time:
  // nvme state is read into memory for the call, never the whole model). Tensors of
  // memory-resident state may be the engine's own: read them before the next step.
  Result<ShardTensors> read_shard(std::uint32_t c);
  // Starts read_shard(c)'s nvme reads, so a caller can read chunk c+1 while it writes
  // chunk c out; the next read_shard(c) finishes them. One begun read at a time.
  void begin_read_shard(std::uint32_t c);
  // The tensors to load chunk c's values into before write_shard(c): memory-resident
  // state's own tensors (their current values), or new ones (master zero, state at its
  // initial values) when it lives on nvme, which is not read for nothing.
  ShardTensors load_target(std::uint32_t c);
  double initial_state_value(std::size_t state) const;  // state_names() order
  // Sets chunk c's shard: master and state to their tier, and the parameters to the
  // master cast to the compute dtype (a frozen chunk: to `values`). Every rank calls
  // it for the same chunks, then end_write_shards() once (replicated chunks are
  // all-gathered there).
  Status write_shard(std::uint32_t c, const ShardTensors& s);
  Status end_write_shards();
  // Per params(): its name (UnitSpec::param_names, else "param<i>"), and its index in
  // store().params(), or -1 for a frozen parameter the store does not hold (stages 0-2:
  // it stays the caller's tensor, whole on every rank).
  const std::vector<std::string>& param_names() const;
  int store_index(std::size_t i) const;
  // Per store parameter: the optimizer steps it has taken, and whether it ever had a
  // gradient (torch::optim creates its state then).
  struct ParamStep {
    std::int64_t steps = 0;
    bool had_grad = false;
  };
  ParamStep param_step(std::size_t store_param) const;
  void set_param_step(std::size_t store_param, ParamStep s);
  void restore_loss_scaler(const LossScaler::State& s);
  void set_steps(std::int64_t n);  // optimizer steps applied, as after a resume
  comm::Communicator& communicator() const;

  int stage() const;
  const EngineOptions& options() const;
  // Every distinct parameter the units listed, in the engine's order.
  const std::vector<at::Tensor>& params() const;
  const ChunkStore& store() const;
  const plan::Schedule* schedule() const;  // stage 3, once the trace is frozen
  const StepMetrics& last_metrics() const;
  MemoryByKind memory_by_kind() const;
  std::uint64_t shard_bytes() const;   // this rank's parameter bytes (stage 3: its shards)
  std::uint64_t state_bytes() const;   // this rank's master + optimizer state bytes
  // Writes a Chrome/Perfetto trace of the next full step to `path` when it ends.
  void trace_next_step(std::string path);
  double lr() const;
  void set_lr(double lr);
  // Note [parameter groups] (engine_options.h): group g steps with lr() * lr_scale(g).
  // One group, at scale 1, when EngineOptions::param_groups is empty.
  std::size_t n_param_groups() const;
  double lr_scale(std::size_t group) const;
  Status set_lr_scale(std::size_t group, double scale);
  // Each group's learning rate, lr() * lr_scale(g).
  std::vector<double> group_lrs() const;
  // Sets every group's learning rate at once, as torch's groups hold them: the largest
  // becomes lr() (which a schedule then drives) and the others scales of it. All zero
  // (a warmup's first step) sets lr() to 0 and keeps the scales, so the groups' ratios
  // survive it. One lr per group, each finite and >= 0.
  Status set_group_lrs(const std::vector<double>& lrs);
  // Each group's weight decay: its own, or the optimizer's.
  std::vector<double> group_weight_decays() const;
  // A weight decay per group for the next steps (a weight-decay schedule), each finite
  // and >= 0.
  Status set_group_weight_decays(const std::vector<double>& decays);
  // Adam's, AdamW's and Lion's betas; nullopt for the other optimizers.
  std::optional<std::array<double, 2>> betas() const;
  // Betas for the next steps (torch's OneCycleLR cycles beta1), each in [0, 1). An error
  // for optimizers without betas.
  Status set_betas(std::array<double, 2> betas);
  // SGD's momentum; nullopt for the other optimizers.
  std::optional<double> momentum() const;
  // SGD's momentum for the next steps (torch's OneCycleLR cycles it), finite and > 0. An
  // error for the other optimizers and for SGD built without momentum (it keeps no
  // momentum buffers).
  Status set_momentum(double momentum);
  const LossScaler& loss_scaler() const;
  std::int64_t steps() const;          // optimizer steps applied
  bool at_boundary() const;            // the next backward ends an accumulation window
  // DeepSpeed's set_gradient_accumulation_boundary: the caller says whether the next
  // backward and step() end the window (a step() where it is true steps, however many
  // micro-steps came before), until it says otherwise; nullopt goes back to counting
  // gradient_accumulation_steps micro-steps (Note [accumulation boundary] in engine.cpp).
  void set_boundary(std::optional<bool> is_boundary);

  struct Impl;

 private:
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata::engine
