// AccessDriver: stage 3's side of the front-end hooks — each unit access is traced, and
// the gathers, releases and reductions around it come from the planner's schedule once
// the trace is frozen, or on demand before that. Internal to src/engine.
//
// Note [nested backward]: the gradient of a unit's output arrives when its backward
// starts; nothing says when it ends. The next unit to start is either nested in it (an
// inner module: the enclosing unit's backward is still running around it) or not (the
// enclosing unit is done). So backward accesses stay open while units nested in them
// run. Nesting is learned in forward: a unit whose pre_forward comes while another
// unit's forward is open is nested in it.
//
// One tensor can be the output of nested units (an outer unit whose forward ends with an
// inner unit's call returns the inner unit's output). Its hooks fire in registration
// order, the inner unit's first; the outer unit then begins with the inner one still
// open above it: the inner one stays open (its backward has not run yet), and the outer
// one is opened beneath it, as if its hook had fired first.
//
// A step (one forward and its backward) begins at the first training access and ends
// when backward does. Step 1 records the trace; at its end the trace is frozen, its hash
// compared across ranks (a mismatch is an error, not a hang), and the schedule planned.
// An access that does not match the frozen trace (a data-dependent branch) drops the
// schedule for the rest of the step: chunks prefetched for it are released, everything
// is fetched on demand, results do not change, and the next step records again.
//
// Note [adopted parameters]: a module's forward may compute with a parameter another
// module owns (torchvision's Swin attention passes its qkv and proj children's weights to
// a function of its own; a tied head multiplies by the embedding's weight). At stage 3
// that parameter holds no values there, as the unit that is running does not gather it.
// DeepSpeed gathers such a parameter when it is touched in a forward and makes it the
// running module's from then on; so does adopt(): the innermost unit whose forward is
// open takes the parameter's chunk, gathered now and counted as in use by each of that
// unit's open accesses (their ends release it), and every later access of the unit
// gathers it too: its backward, where autograd reads the saved parameter, and the next
// steps, which the schedule then prefetches for. The schedule in force was planned
// without it, so a frozen trace records again from the next step (this step runs on
// demand from here). The Python front end calls it when its guard sees such a use
// (Note [released parameters], python/strata/_guard.py).
//
// An access ends when its unit's forward returns, or when its backward is done (above);
// where it ends is part of the trace (Note [overlapping accesses] in strata/plan/trace.h),
// and the schedule keeps its chunks gathered until then. Within a step a forward with
// grad mode off is traced too: reentrant activation checkpointing runs the checkpointed
// modules' forwards under no_grad, then again inside their backward.
//
// Note [covered units]: a unit whose parameters are all a leaf unit's (UnitSpec::leaf: a
// module marked with set_leaf_modules, as DeepSpeed's z3 leaf modules, or one of the
// built-in leaves, nn.MultiheadAttention and the transformer layers, whose units hold
// their whole subtree) is covered by it. Called while a forward of the leaf is open, its
// call is no access of its own: the leaf's access has its chunks gathered, and the call
// is neither traced nor hooked for backward, where the leaf's backward access holds
// them. So code inside a leaf may take paths that differ across ranks (a mixture of
// experts calls only the experts its rank's tokens chose) while every rank's trace,
// gathers and releases stay the same; the gradients those paths leave differ across
// ranks, and stage 3 reduces them at access ends (Note [reductions at access ends],
// grad_reducer.h). A unit that adopts a parameter (Note [adopted parameters]) is
// covered no more.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "engine_core.h"
#include "gatherer.h"
#include "grad_reducer.h"
#include "strata/plan/trace.h"

namespace strata::engine {

struct UnitRt {
  std::string name;
  std::vector<std::uint32_t> chunks;  // chunks holding the unit's parameters
  std::vector<std::uint32_t> params;  // the unit's parameters (ChunkStore indexes)
  bool leaf = false;                  // UnitSpec::leaf
  std::vector<UnitId> ancestors;      // units whose forward was open when it ran
  std::vector<UnitId> covered_by;     // leaf units holding all of its parameters (Note [covered units])
};

class AccessDriver {
 public:
  struct Callbacks {
    std::function<void()> backward_activity;  // a backward hook ran (opens the engine's session)
    std::function<Status()> refit;            // auto placement, once the trace is frozen
  };
  AccessDriver(EngineCore& core, Gatherer& gatherer, GradReducer& reducer, std::vector<UnitRt> units,
               Callbacks callbacks);
  ~AccessDriver();  // removes the hooks on leaf outputs (Note [leaf outputs])
  AccessDriver(const AccessDriver&) = delete;
  AccessDriver& operator=(const AccessDriver&) = delete;

  Status pre_forward(UnitId u);
  Status post_forward(UnitId u, std::span<const at::Tensor> outputs);
  // Note [adopted parameters]: the innermost unit whose forward is open takes store
  // parameter `param`; returns that unit, or nullopt when no unit's forward is open.
  Result<std::optional<UnitId>> adopt(std::uint32_t param);
  // Ends the forward accesses still open above the first `depth`, appending their units
  // to *ended when given (Note [a forward that raised]).
  Status abort_forward(std::size_t depth = 0, std::vector<UnitId>* ended = nullptr);
  // When backward ends: the open backward accesses close, every chunk but the
  // persistent ones is released, and the trace step ends.
  Status end_backward();
  // After an optimizer step: gathered persistent chunks hold stale values.
  Status after_optimizer_step();

  const std::vector<UnitRt>& units() const { return units_; }
  const plan::AccessTrace& trace() const { return trace_; }
  const plan::Schedule* schedule() const { return schedule_ ? &*schedule_ : nullptr; }
  bool in_step() const { return in_step_; }
  // The schedule of an access sequence (with where its accesses end: AccessTrace's
  // open_through and close_order; empty: each before the next begins), the chunks'
  // current tiers and the measured activation bytes (when measured for this sequence).
  Result<plan::Schedule> plan(std::span<const plan::ModuleAccess> accesses,
                              std::span<const std::uint32_t> open_through = {},
                              std::span<const std::uint32_t> close_order = {}) const;
  // Units forward in order, then backward in reverse: the trace most models make, to
  // check a placement before any step has run.
  std::vector<plan::ModuleAccess> provisional_trace() const;

 private:
  void begin_step_if_needed();
  bool measuring_activations() const;
  // Live CPU bytes the tier reservations do not account for (activations, temporaries).
  std::uint64_t non_model_bytes() const;
  // An open access: its index in the frozen trace when the step follows the schedule,
  // and its index in this step's trace (none outside a training step).
  struct Open {
    UnitId u = 0;
    std::optional<std::size_t> at, pos;
    bool covered = false;  // a call inside a covering unit's forward: no access (Note [covered units])
  };
  bool covered_now(UnitId u) const;  // an open forward access covers u
  // The innermost open forward access that is one (not a covered call), or nullptr.
  const Open* innermost_forward() const;
  Result<Open> on_access(UnitId u, plan::Phase phase);
  Status finish_access(const Open& a, plan::Phase phase);
  Status run_ops(const std::vector<plan::Op>& ops, std::size_t at);
  // Note [nvme parameter staging]: the Loads of the next kLoadAhead accesses, issued now.
  Status load_ahead(std::size_t at);
  static constexpr std::size_t kLoadAhead = 2;
  void begin_unit_backward(UnitId u);  // from a tensor hook; raises through core.errors
  // Note [reductions at access ends]: a forward call of u in this step that a backward
  // access of u will follow; a backward access of u ended: the chunks no unit still
  // needs in this backward are reduced.
  void count_call(UnitId u, bool hooked);
  Status backward_ended(UnitId u);
  Status end_trace_step();
  void drop_schedule();
  // Note [gradient arrival]: per chunk, the access from which its grad buffer is live.
  std::vector<std::uint32_t> grad_from(std::span<const plan::ModuleAccess> accesses) const;

  EngineCore& core_;
  Gatherer& gatherer_;
  GradReducer& reducer_;
  std::vector<UnitRt> units_;
  Callbacks cb_;
  plan::AccessTrace trace_;
  std::optional<plan::Schedule> schedule_;
  bool in_step_ = false;
  std::uint64_t step_serial_ = 0;  // steps begun: which one a forward call belongs to
  bool scheduled_step_ = false;  // this step follows the schedule (so far)
  bool schedule_unfit_warned_ = false;  // Note [a schedule that does not fit], access_driver.cpp
  // A forward ran with grad mode off within the step (reentrant checkpointing): in this
  // step, and in the step that recorded the frozen trace.
  bool step_no_grad_forward_ = false, trace_no_grad_forward_ = false;
  // Open accesses. Backward ones outermost first.
  std::vector<Open> fwd_stack_, bwd_stack_;
  // Note [leaf outputs]: hooks on outputs that are leaves, removed when the backward ends.
  std::vector<std::pair<at::Tensor, unsigned>> leaf_hooks_;
  // Note [reductions at access ends]: per unit, this step's forward calls that a backward
  // access follows, and the backward accesses that ended; per chunk, the units holding it.
  std::vector<std::uint32_t> calls_, bwd_ends_;
  std::vector<std::vector<UnitId>> chunk_units_;
  // Units whose open forward the last backward's end ended (Note [a forward that raised]).
  std::vector<UnitId> ended_by_backward_;
  void remove_leaf_hooks();
  Clock::time_point unit_t0_;
  // auto placement: non-model bytes live at each access of the recording step.
  std::vector<std::uint64_t> access_live_bytes_;
  std::uint64_t baseline_live_bytes_ = 0;
};

}  // namespace strata::engine
