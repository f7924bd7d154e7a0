#include "access_driver.h"

#include <algorithm>
#include <map>
#include <memory>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>

#include "strata/base/log.h"
#include "strata/base/units.h"
#include "strata/tiers/memory_probe.h"

namespace strata::engine {

AccessDriver::AccessDriver(EngineCore& core, Gatherer& gatherer, GradReducer& reducer, std::vector<UnitRt> units,
                           Callbacks callbacks)
    : core_(core), gatherer_(gatherer), reducer_(reducer), units_(std::move(units)), cb_(std::move(callbacks)) {
  // Note [covered units]: the candidates are the leaf units holding a unit's first parameter.
  std::vector<std::vector<UnitId>> holders(core_.chunks->store().params().size());
  std::vector<std::vector<std::uint32_t>> sorted(units_.size());
  for (UnitId u = 0; u < static_cast<UnitId>(units_.size()); ++u) {
    sorted[u] = units_[u].params;
    std::ranges::sort(sorted[u]);
    for (std::uint32_t p : units_[u].params) holders[p].push_back(u);
  }
  chunk_units_.resize(core_.chunks->size());
  for (UnitId u = 0; u < static_cast<UnitId>(units_.size()); ++u)
    for (std::uint32_t c : units_[u].chunks) chunk_units_[c].push_back(u);
  calls_.assign(units_.size(), 0);
  bwd_ends_.assign(units_.size(), 0);
  for (UnitId u = 0; u < static_cast<UnitId>(units_.size()); ++u) {
    if (sorted[u].empty()) continue;
    for (UnitId v : holders[sorted[u].front()])
      if (v != u && units_[v].leaf && std::ranges::includes(sorted[v], sorted[u])) units_[u].covered_by.push_back(v);
  }
}

bool AccessDriver::covered_now(UnitId u) const {
  const auto& by = units_[u].covered_by;
  return std::ranges::any_of(fwd_stack_, [&](const Open& o) {
    return !o.covered && std::find(by.begin(), by.end(), o.u) != by.end();
  });
}

const AccessDriver::Open* AccessDriver::innermost_forward() const {
  for (auto it = fwd_stack_.rbegin(); it != fwd_stack_.rend(); ++it)
    if (!it->covered) return &*it;
  return nullptr;
}

AccessDriver::~AccessDriver() { remove_leaf_hooks(); }

// Note [leaf outputs]: a unit may return a leaf: its own parameter as it is (a learned
// token or scale; its caller registers it as an external parameter to use it at stage
// 3), or an input that requires a gradient, passed through. A hook on a non-leaf output
// lives and dies with this forward's graph; one on a leaf stays on the tensor, so every
// later backward fired every earlier forward's hook: the second step failed with "a
// second backward through one forward" (the hook of the step before had fired), and the
// hooks piled up one a forward. So they are removed when the backward ends, and when
// the engine goes (the parameter outlives it; its hooks would call into a freed engine).
void AccessDriver::remove_leaf_hooks() {
  for (auto& [tensor, handle] : leaf_hooks_) tensor.remove_hook(handle);
  leaf_hooks_.clear();
}

void AccessDriver::begin_step_if_needed() {
  if (in_step_) return;
  in_step_ = true;
  ++step_serial_;
  step_no_grad_forward_ = false;
  std::ranges::fill(calls_, 0);
  std::ranges::fill(bwd_ends_, 0);
  trace_.begin_step();
  scheduled_step_ = core_.opt.prefetch && schedule_.has_value() && trace_.complete();
  if (scheduled_step_) core_.cur.planned += schedule_->moved;
  core_.cur.scheduled = scheduled_step_;
  if (measuring_activations()) {
    access_live_bytes_.clear();
    baseline_live_bytes_ = non_model_bytes();
  }
}

std::uint64_t AccessDriver::non_model_bytes() const {
  return tiers::MemoryProbe::live_bytes() - (core_.tiers.used(Tier::kCompute) + core_.tiers.used(Tier::kHost));
}

bool AccessDriver::measuring_activations() const {
  return core_.opt.placement == Placement::kAuto && tiers::MemoryProbe::installed() && !trace_.complete();
}

void AccessDriver::drop_schedule() {
  scheduled_step_ = false;
  schedule_.reset();
}

Result<AccessDriver::Open> AccessDriver::on_access(UnitId u, plan::Phase phase) {
  std::optional<std::size_t> at, pos;
  // Inference (a forward without an autograd graph, outside a training step) fetches on
  // demand and leaves the training trace alone. Backward runs with grad mode off, but is
  // always training; so is a no_grad forward within a step (reentrant checkpointing).
  const bool training = phase == plan::Phase::kBackward || at::GradMode::is_enabled() || in_step_;
  if (training && core_.opt.on_access) core_.opt.on_access(u, phase);
  if (training) {
    begin_step_if_needed();
    if (phase == plan::Phase::kForward && !at::GradMode::is_enabled()) step_no_grad_forward_ = true;
    at = trace_.on_access({u, phase});
    pos = trace_.index() - 1;
    if (scheduled_step_ && !at) {
      // Another path through the model: the trace warned once. What the schedule
      // prefetched for the old path goes; the rest of the step runs on demand.
      drop_schedule();
      STRATA_RETURN_IF_ERROR(gatherer_.release_all(false));
    }
    if (scheduled_step_) STRATA_RETURN_IF_ERROR(run_ops(schedule_->accesses[*at].pre, *at));
    if (scheduled_step_) STRATA_RETURN_IF_ERROR(load_ahead(*at));
  }
  STRATA_RETURN_IF_ERROR(reducer_.poll());
  STRATA_RETURN_IF_ERROR(gatherer_.ensure(units_[u].chunks));
  for (std::uint32_t c : units_[u].chunks) (*core_.chunks)[c].sm.begin_use();
  if (training && measuring_activations()) {
    const std::uint64_t live = non_model_bytes();
    access_live_bytes_.push_back(live > baseline_live_bytes_ ? live - baseline_live_bytes_ : 0);
  }
  unit_t0_ = Clock::now();
  return Open{u, at, pos};
}

Status AccessDriver::finish_access(const Open& a, plan::Phase phase) {
  if (a.covered) return ok();  // Note [covered units]
  const UnitId u = a.u;
  const ChunkState after = phase == plan::Phase::kForward ? ChunkState::kHoldAfterFwd : ChunkState::kHoldAfterBwd;
  for (std::uint32_t c : units_[u].chunks) (*core_.chunks)[c].sm.end_use(after);
  core_.trace.add(StepTrace::kCompute, fmt::format("{} {}", units_[u].name, plan::to_string(phase)), unit_t0_,
                  Clock::now());
  if (phase == plan::Phase::kBackward) STRATA_RETURN_IF_ERROR(backward_ended(u));
  if (a.pos && !trace_.on_close(*a.pos) && scheduled_step_) {
    // It ends elsewhere than the schedule planned for (the trace warned once): as for
    // another path through the model, the rest of the step runs on demand.
    drop_schedule();
    STRATA_RETURN_IF_ERROR(gatherer_.release_all(false));
  }
  if (scheduled_step_ && a.at) return run_ops(schedule_->accesses[*a.at].post, *a.at);
  // On demand: release what this unit used as soon as nobody uses it. Outside a training
  // step (inference) persistent chunks go too: the next step's schedule gathers them.
  for (std::uint32_t c : units_[u].chunks) STRATA_RETURN_IF_ERROR(gatherer_.release(c, /*persistent_too=*/!in_step_));
  return ok();
}

Status AccessDriver::run_ops(const std::vector<plan::Op>& ops, std::size_t at) {
  for (const plan::Op& op : ops) {
    switch (op.kind) {
      case plan::OpKind::kLoad: STRATA_RETURN_IF_ERROR(gatherer_.load(op.chunk)); break;
      case plan::OpKind::kGather: STRATA_RETURN_IF_ERROR(gatherer_.gather(op.chunk, op.use_index > at)); break;
      case plan::OpKind::kRelease:
      case plan::OpKind::kEvict: STRATA_RETURN_IF_ERROR(gatherer_.release(op.chunk)); break;
      case plan::OpKind::kReduceScatter: STRATA_RETURN_IF_ERROR(reducer_.reduce_now(op.chunk)); break;
      case plan::OpKind::kStep:
      case plan::OpKind::kStore:
        // The planner puts these in Schedule::step only (plan::step_ops).
        TORCH_INTERNAL_ASSERT(false, "the schedule has a ", plan::to_string(op.kind), " op at access ", at);
    }
  }
  return ok();
}

Status AccessDriver::load_ahead(std::size_t at) {
  const std::size_t end = std::min(schedule_->accesses.size(), at + 1 + kLoadAhead);
  for (std::size_t j = at + 1; j < end; ++j)
    for (const plan::Op& op : schedule_->accesses[j].pre)
      if (op.kind == plan::OpKind::kLoad) STRATA_RETURN_IF_ERROR(gatherer_.load(op.chunk));
  return ok();
}

Status AccessDriver::pre_forward(UnitId u) {
  std::erase(ended_by_backward_, u);  // a new call: the old one raised
  if (covered_now(u)) {  // Note [covered units]
    fwd_stack_.push_back(Open{.u = u, .covered = true});
    return ok();
  }
  // Units open now enclose this one (Note [nested backward]).
  for (const Open& outer : fwd_stack_) {
    auto& anc = units_[u].ancestors;
    if (!outer.covered && outer.u != u && std::find(anc.begin(), anc.end(), outer.u) == anc.end())
      anc.push_back(outer.u);
  }
  STRATA_ASSIGN_OR_RETURN(Open a, on_access(u, plan::Phase::kForward));
  fwd_stack_.push_back(a);
  return ok();
}

// Note [reductions at access ends] (grad_reducer.h). A forward that runs inside a
// backward is a reentrant checkpoint's recompute of a call that ran without grad mode and
// was counted then (a non-reentrant one's recompute gets no backward access of its own).
// A call without grad mode that nothing recomputes (a no_grad pass in the training step)
// keeps its unit's chunks from being reduced before backward ends.
void AccessDriver::count_call(UnitId u, bool hooked) {
  if (in_step_ && bwd_stack_.empty() && (hooked || !at::GradMode::is_enabled())) ++calls_[u];
}

Status AccessDriver::backward_ended(UnitId u) {
  if (!reducer_.at_access_ends() || !core_.opt.overlap_comm || ++bwd_ends_[u] < calls_[u]) return ok();
  for (std::uint32_t c : units_[u].chunks) {
    const auto& holders = chunk_units_[c];
    if (std::ranges::all_of(holders, [&](UnitId v) { return bwd_ends_[v] >= calls_[v]; }))
      STRATA_RETURN_IF_ERROR(reducer_.reduce_now(c));
  }
  return ok();
}

// Note [a forward that raised]: a unit whose forward raises never reaches its forward
// hook, so its access stays open, with its chunks gathered and counted as in use. A loop
// that catches the exception and skips the batch (or a model that catches it inside its
// own forward and goes on) then left it open for good: the step's release passed over
// its chunks, and with parameters on nvme the next steps computed with their values from
// before the optimizer step (3.7e-3 off plain PyTorch after 8 steps, without a word).
// (A unit whose forward caught it failed "post_forward without its pre_forward".) Later
// units also took it for an enclosing one. Open accesses end here, innermost first, as
// if their forwards had returned: a unit's post_forward ends those begun inside it;
// front ends call it where they see the exception and before the outermost unit's
// forward; and the backward's end calls it, since every forward a backward follows has
// returned.
Status AccessDriver::abort_forward(std::size_t depth, std::vector<UnitId>* ended) {
  Status first = ok();
  while (fwd_stack_.size() > depth) {
    const Open a = fwd_stack_.back();
    fwd_stack_.pop_back();
    log::debug("unit '{}': its forward raised; its access ends here", units_[a.u].name);
    if (ended) ended->push_back(a.u);
    if (Status st = finish_access(a, plan::Phase::kForward); !st && first) first = std::move(st);
  }
  return first;
}

Status AccessDriver::post_forward(UnitId u, std::span<const at::Tensor> outputs) {
  const auto open = std::find_if(fwd_stack_.rbegin(), fwd_stack_.rend(), [u](const Open& o) { return o.u == u; });
  if (open == fwd_stack_.rend()) {
    if (std::erase(ended_by_backward_, u) > 0) {  // its forward did not raise: it ran a backward
      return make_error(ErrorCode::kFailedPrecondition,
                        "a backward ran inside the forward of unit '{}' at stage 3 (torch.autograd.grad inside the "
                        "model's forward, as an input-gradient feature or penalty computes): stage 3 gathers a unit's "
                        "parameters for one backward per forward call, and a backward's end ends the forwards still "
                        "open. Train at stage 1 or 2, which run it", units_[u].name);
    }
    return make_error(ErrorCode::kFailedPrecondition, "post_forward of unit '{}' without its pre_forward",
                      units_[u].name);
  }
  // Units above it began inside its forward and never returned: they raised, and its
  // forward caught that (Note [a forward that raised]).
  STRATA_RETURN_IF_ERROR(abort_forward(static_cast<std::size_t>(fwd_stack_.rend() - open)));
  const Open a = fwd_stack_.back();
  fwd_stack_.pop_back();
  STRATA_RETURN_IF_ERROR(finish_access(a, plan::Phase::kForward));
  // Inference: no backward to prepare. A covered call: the covering unit's backward
  // access holds its chunks (Note [covered units]).
  if (a.covered) return ok();
  if (!at::GradMode::is_enabled()) {
    count_call(u, false);
    return ok();
  }
  // The pre-backward hook: the first gradient of any output of this call arrives just
  // before the unit's own backward runs, so that is when its chunks must be gathered
  // again. One call, one backward access, however many outputs it has.
  // Note [one backward per forward]: a gradient arriving again once the step that
  // gathered them ended is a second backward through this call's graph
  // (loss.backward(retain_graph=True) then another, or torch.autograd.grad through the
  // model and then the loss's backward, as a gradient penalty does). Its saved tensors
  // are views of parameters released since; ATen would fail on them with an opaque
  // "setStorage ... out of bounds", or read freed memory. It is refused by name, and so
  // is a backward with create_graph=True (it runs with grad mode on), whose graph would
  // keep the gathered parameters for a later backward.
  auto fired = std::make_shared<bool>(false);
  const std::uint64_t serial = step_serial_;
  bool hooks = false;
  for (const at::Tensor& out : outputs) {
    if (!out.defined() || !out.requires_grad()) continue;
    at::Tensor hooked = out;
    const unsigned handle = hooked.register_hook([this, u, fired, serial](const at::Tensor&) {
      if (*fired) {
        if (!in_step_ || step_serial_ != serial) {
          core_.errors.raise(Error(ErrorCode::kFailedPrecondition, fmt::format(
              "a second backward through one forward of unit '{}' at stage 3 (loss.backward(retain_graph=True) "
              "and another backward, or torch.autograd.grad through the model before the loss's backward, as a "
              "gradient penalty does): stage 3 gathers a unit's parameters for one backward per forward call. "
              "Call backward once, on the sum of the losses, or train at stage 1 or 2, which run these",
              units_[u].name)));
        }
        return;
      }
      if (at::GradMode::is_enabled()) {  // create_graph=True: the backward runs with grad mode on
        core_.errors.raise(Error(ErrorCode::kFailedPrecondition, fmt::format(
            "a backward with create_graph=True through unit '{}' at stage 3 (torch.autograd.grad(..., "
            "create_graph=True), as a gradient penalty computes): the graph it builds keeps parameters that stage 3 "
            "releases after the backward. Train at stage 1 or 2, which run it", units_[u].name)));
      }
      *fired = true;
      cb_.backward_activity();
      begin_unit_backward(u);
    });
    if (hooked.is_leaf()) leaf_hooks_.emplace_back(hooked, handle);  // Note [leaf outputs]
    hooks = true;
  }
  count_call(u, hooks);
  return ok();
}

// Note [adopted parameters] (access_driver.h).
Result<std::optional<UnitId>> AccessDriver::adopt(std::uint32_t param) {
  const Open* open = innermost_forward();
  if (!open) return std::optional<UnitId>();
  const UnitId u = open->u;
  UnitRt& unit = units_[u];
  if (std::find(unit.params.begin(), unit.params.end(), param) != unit.params.end()) return u;
  for (std::uint32_t c : plan::chunks_of(core_.chunks->store().layout(), std::span<const std::uint32_t>(&param, 1))) {
    const auto at = std::lower_bound(unit.chunks.begin(), unit.chunks.end(), c);
    if (at != unit.chunks.end() && *at == c) continue;  // a parameter it holds shares the chunk
    // Gathered first: a gather that fails (cannot fit, a lost peer) changes nothing.
    STRATA_RETURN_IF_ERROR(gatherer_.ensure({c}));
    unit.chunks.insert(at, c);
    chunk_units_[c].push_back(u);
    // finish_access ends one use of each of the unit's chunks per open access of it.
    auto is_u = [u](const Open& o) { return o.u == u && !o.covered; };
    const auto opens = std::ranges::count_if(fwd_stack_, is_u) + std::ranges::count_if(bwd_stack_, is_u);
    for (std::ptrdiff_t i = 0; i < opens; ++i) (*core_.chunks)[c].sm.begin_use();
  }
  unit.params.push_back(param);
  unit.covered_by.clear();  // it holds a parameter its covering units may not (Note [covered units])
  if (trace_.complete()) {  // planned without it: plan again from the next step's trace
    trace_.rerecord();
    if (scheduled_step_) {
      drop_schedule();
      STRATA_RETURN_IF_ERROR(gatherer_.release_all(false));
    }
  }
  return u;
}

// Note [nested backward].
void AccessDriver::begin_unit_backward(UnitId u) {
  const auto& anc = units_[u].ancestors;
  auto nested_in_u = [&](UnitId open) {
    const auto& a = units_[open].ancestors;
    return std::find(a.begin(), a.end(), u) != a.end();
  };
  std::vector<Open> inner;  // open units nested in u: stay open
  while (!bwd_stack_.empty() && std::find(anc.begin(), anc.end(), bwd_stack_.back().u) == anc.end()) {
    const Open open = bwd_stack_.back();
    bwd_stack_.pop_back();
    if (nested_in_u(open.u)) {
      inner.push_back(open);
      continue;
    }
    core_.errors.check(finish_access(open, plan::Phase::kBackward));
  }
  auto a = on_access(u, plan::Phase::kBackward);
  if (!a) core_.errors.raise(std::move(a).error());
  bwd_stack_.push_back(*a);
  bwd_stack_.insert(bwd_stack_.end(), inner.rbegin(), inner.rend());
}

Status AccessDriver::end_backward() {
  remove_leaf_hooks();  // this backward has run them (Note [leaf outputs])
  // Forwards that raised (Note [a forward that raised]); or, when a backward runs inside
  // a forward, forwards still running: post_forward then says so.
  ended_by_backward_.clear();
  STRATA_RETURN_IF_ERROR(abort_forward(0, &ended_by_backward_));
  while (!bwd_stack_.empty()) {
    const Open open = bwd_stack_.back();
    bwd_stack_.pop_back();
    STRATA_RETURN_IF_ERROR(finish_access(open, plan::Phase::kBackward));
  }
  STRATA_RETURN_IF_ERROR(reducer_.end_backward());
  // The step may change every parameter: nothing but persistent chunks stays gathered.
  STRATA_RETURN_IF_ERROR(gatherer_.release_all(false));
  return end_trace_step();
}

Status AccessDriver::after_optimizer_step() { return gatherer_.release_all(true); }

Result<plan::Schedule> AccessDriver::plan(std::span<const plan::ModuleAccess> accesses,
                                          std::span<const std::uint32_t> open_through,
                                          std::span<const std::uint32_t> close_order) const {
  std::map<int, std::vector<plan::ChunkId>> module_chunks;
  for (UnitId u = 0; u < static_cast<UnitId>(units_.size()); ++u) module_chunks[u] = {units_[u].chunks.begin(), units_[u].chunks.end()};
  plan::ScheduleInput in{.chunks = core_.chunks->schedule_chunks(),
                         .accesses = plan::chunk_accesses(accesses, module_chunks, open_through),
                         .options = core_.opt.schedule,
                         .close_order = {close_order.begin(), close_order.end()},
                         .grad_from = grad_from(accesses)};
  if (access_live_bytes_.size() == in.accesses.size()) {
    for (std::size_t i = 0; i < in.accesses.size(); ++i) in.accesses[i].reserved_compute_bytes = access_live_bytes_[i];
  }
  return plan::make_schedule(in);
}

// Note [gradient arrival]: AccumulateGrad runs once per backward for a parameter, when
// the gradients of all its uses have been summed, so after the last backward access of
// the units that own it begins (a tied weight's comes at the end of backward); the chunk's
// buffer is taken by its first parameter to arrive. Not so under reentrant checkpointing:
// a checkpoint's nested backward accumulates the parameters it used on its own, earlier.
// A step that ran a forward without grad mode (how a reentrant checkpoint's first forward
// runs) keeps the schedule's default, the chunk's first backward access. (A unit that
// owns a shared parameter but did not use it in the step would also make the estimate
// late; then a grad buffer can find the budget full in backward, a "cannot fit" error.)
std::vector<std::uint32_t> AccessDriver::grad_from(std::span<const plan::ModuleAccess> accesses) const {
  constexpr std::uint32_t kNone = UINT32_MAX;
  const ChunkStore& store = core_.chunks->store();
  if (trace_no_grad_forward_) return {};
  std::vector<std::uint32_t> last_bwd(units_.size(), kNone);
  for (std::size_t i = 0; i < accesses.size(); ++i) {
    const auto u = static_cast<std::size_t>(accesses[i].module_id);
    if (accesses[i].phase == plan::Phase::kBackward && u < units_.size()) last_bwd[u] = static_cast<std::uint32_t>(i);
  }
  std::vector<std::uint32_t> arrival(store.params().size(), kNone);
  for (std::size_t u = 0; u < units_.size(); ++u) {
    if (last_bwd[u] == kNone) continue;
    for (std::uint32_t p : units_[u].params)
      arrival[p] = arrival[p] == kNone ? last_bwd[u] : std::max(arrival[p], last_bwd[u]);
  }
  std::vector<std::uint32_t> from(core_.chunks->size(), kNone);
  for (std::uint32_t p = 0; p < arrival.size(); ++p) {
    if (arrival[p] == kNone || !store.params()[p].requires_grad()) continue;
    std::uint32_t& f = from[store.layout().where[p].chunk];
    f = std::min(f, arrival[p]);
  }
  return from;
}

std::vector<plan::ModuleAccess> AccessDriver::provisional_trace() const {
  // Covered units run inside the units covering them, as no access (Note [covered units]).
  std::vector<UnitId> runs;
  for (UnitId u = 0; u < static_cast<UnitId>(units_.size()); ++u)
    if (units_[u].covered_by.empty()) runs.push_back(u);
  std::vector<plan::ModuleAccess> t;
  for (UnitId u : runs) t.push_back({u, plan::Phase::kForward});
  for (auto it = runs.rbegin(); it != runs.rend(); ++it) t.push_back({*it, plan::Phase::kBackward});
  return t;
}

Status AccessDriver::end_trace_step() {
  const bool was_recording = trace_.state() == plan::AccessTrace::State::kRecord;
  trace_.end_step();
  if (was_recording) trace_no_grad_forward_ = step_no_grad_forward_;
  in_step_ = false;
  if (!trace_.complete()) {
    schedule_.reset();
    return ok();
  }
  if (!was_recording) return ok();
  // Every rank must have seen the same sequence, or their collectives would diverge.
  comm::Communicator& comm = core_.comm;
  const auto mine = static_cast<std::int64_t>(trace_.hash());
  at::Tensor local = at::full({1}, mine, at::kLong), all = at::empty({comm.world()}, at::kLong);
  STRATA_RETURN_IF_ERROR(comm.all_gather(local, all).wait());
  for (int r = 0; r < comm.world(); ++r) {
    if (all[r].item<std::int64_t>() != mine) {
      return make_error(ErrorCode::kFailedPrecondition,
                        "the access trace differs across ranks: rank {} recorded {} accesses with hash {:016x}, rank {} "
                        "hash {:016x}; every rank must run the same modules in the same order (code whose path "
                        "differs across ranks, as a mixture of experts' routing, goes inside one unit: a "
                        "fully_shard'ed block, or a leaf module, strata.set_leaf_modules)",
                        comm.rank(), trace_.accesses().size(), static_cast<std::uint64_t>(mine), r,
                        static_cast<std::uint64_t>(all[r].item<std::int64_t>()))
          .with_rank(comm.rank());
    }
  }
  STRATA_RETURN_IF_ERROR(cb_.refit());
  Result<plan::Schedule> planned = plan(trace_.accesses(), trace_.open_through(), trace_.close_order());
  if (!planned && planned.error().code() == ErrorCode::kResourceExhausted) {
    // Note [a schedule that does not fit]: the planner holds each chunk's gradient buffer
    // from its first gradient to its last backward access, as a whole; the steps that run
    // on demand make room by reducing partial buffers early (Note [partial buffers make
    // room], grad_reducer.cpp), so a trace the recording step ran within the budget may
    // have no schedule that fits (two forwards before one backward keep every chunk's
    // buffer open across both backwards). Its steps then run on demand, as that one did,
    // within the budget; the plan is the same on every rank, so is the choice.
    if (!schedule_unfit_warned_) {
      log::warn("stage 3: no prefetch schedule of this step's module order fits the compute budget ({}); its steps "
                "fetch on demand, within the budget",
                planned.error().message());
      schedule_unfit_warned_ = true;
    }
    return ok();
  }
  STRATA_ASSIGN_OR_RETURN(plan::Schedule s, std::move(planned));
  log::debug("stage 3: trace of {} accesses frozen (hash {:016x}); schedule: {} gathers, {} prefetched, host<->compute {}",
             trace_.accesses().size(), trace_.hash(), s.n_gathers, s.n_prefetched, format_bytes(s.moved.host_compute()));
  schedule_ = std::move(s);
  return ok();
}

}  // namespace strata::engine
