// Engine::Impl: the engine's components, built in dependency order. Internal to
// src/engine. engine.cpp holds setup and the entry points, placement.cpp the tier
// decisions, state_dict.cpp consolidation and loading, param_edits.cpp the caller's
// in-place edits of trained parameters.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "strata/base/lr_schedule.h"
#include "strata/tiers/host_heap.h"

#include "access_driver.h"
#include "engine_core.h"
#include "gatherer.h"
#include "grad_reducer.h"
#include "optim_state.h"
#include "shard_state.h"
#include "step_driver.h"

namespace strata::engine {

// master (fp32) takes value (one parameter's elements, any float dtype on any device):
// only the elements whose value is not the master's rounding to value's dtype, so the
// others keep their fp32 bits (Note [edited parameters]).
void take_values(const at::Tensor& master, const at::Tensor& value);

struct Engine::Impl {
  Impl(EngineOptions options, comm::Communicator& comm) : core(std::move(options), comm) {}

  EngineCore core;  // first: everything below refers to it
  StepKernel kernel;
  std::optional<LrSchedule> lr_schedule;  // the config's scheduler block, if any
  std::vector<at::Tensor> all_params;   // every distinct parameter, engine order
  std::vector<int> store_index;         // per all_params: its index in the store, or -1 (stage < 3 frozen)
  std::vector<std::string> param_names;  // per all_params (Engine::param_names)
  std::vector<std::size_t> frozen_at_build;  // all_params frozen when built (Note [unfreezing])
  std::vector<std::int64_t> param_versions;  // per all_params, at the engine's last write (Note [edited parameters])
  std::vector<std::vector<std::size_t>> chunk_params;  // per chunk: the all_params the store holds in it
  std::optional<OptimStateHolder::PendingRead> pending_read;  // begin_read_shard's
  int gathered = 0;  // gather_params() calls not yet released (Note [gathered parameters])
  std::unique_ptr<OptimStateHolder> optim;
  std::unique_ptr<GradReducer> reducer;
  std::unique_ptr<Gatherer> gatherer;
  std::unique_ptr<AccessDriver> access;  // stage 3
  std::unique_ptr<StepDriver> stepper;

  std::size_t n_units = 0;
  // Stages 0-2: each unit's chunks, for the order of reductions (Note [reductions in one
  // order], grad_reducer.h); stage 3's AccessDriver holds its own.
  std::vector<std::vector<std::uint32_t>> unit_chunks;
  std::int64_t window_micro_steps = 0;  // step() calls since the last boundary (Note [accumulation boundary])
  std::optional<bool> boundary_override;  // Engine::set_boundary
  std::int64_t step_count = 0;
  bool step_open = false;        // a training forward has begun and its backward not ended
  Clock::time_point step_t0;
  bool in_backward = false;      // a backward session is open (a hook ran)
  std::uint64_t backward_sessions = 0;
  Clock::time_point backward_t0;
  bool backward_done = false;    // a backward ended since the last step(): step() needs one
  bool scaling_backward = false; // inside Engine::backward(): the loss carries the scale
  bool unscaled_backward = false;  // this session's loss was not scaled, and had to be
  std::exception_ptr backward_exception;  // Note [the model's exceptions] (engine.cpp)
  StepMetrics last;
  tiers::HeapTrimPolicy heap_trim;  // after each optimizer step (Note [host heap])

  // placement.cpp
  Status place();                // tiers of every chunk (on paper), the swap store and its records
  // engine.cpp
  Status fill(const std::vector<at::Tensor>& chunked, const ParamInit& init);  // Note [streaming setup]
  Status fit_auto();             // auto: shards off compute until the schedule fits
  Status check_fits();           // stage 3: the schedule of the provisional trace fits
  void open_backward();          // the first hook of a backward
  Status close_backward();       // when backward ends (autograd callback, or backward())
  Status end_failed_backward();  // Note [the model's exceptions] (engine.cpp)
  Status check_still_frozen() const;  // Note [unfreezing]
  // param_edits.cpp (Note [edited parameters])
  void record_param_versions();
  Status adopt_param_edits();    // trained parameters changed in place go into the masters
  // Note [edits while gathered]: the Gatherer's Edits.
  void index_chunk_params();
  bool edited_in(std::uint32_t c) const;
  // Chunk c's edited (by store index) parameters' values in this rank's slice into its master.
  Status take_into_master(std::uint32_t c, const at::Tensor& slice, const std::vector<std::uint8_t>& edited);
  Status take_gathered_edits(std::uint32_t c, const at::Tensor& slice);
  // all_params index of the tensor `p` is (the same TensorImpl).
  Result<std::size_t> param_index(const at::Tensor& p) const;
  bool at_boundary() const {
    return boundary_override ? *boundary_override : window_micro_steps + 1 >= core.opt.gradient_accumulation_steps;
  }
  void apply_schedule();         // the lr (and betas) of the next optimizer step, step_count's
  void finish_metrics();
};

}  // namespace strata::engine
