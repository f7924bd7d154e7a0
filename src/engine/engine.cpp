// Engine: setup, the front-end hooks, and the backward and step entry points.
#include "strata/engine/engine.h"

#include <algorithm>
#include <unordered_map>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/graph_task.h>

#include "engine_impl.h"
#include "strata/base/log.h"
#include "strata/base/units.h"
#include "strata/engine/module_hooks.h"
#include "strata/tiers/host_heap.h"

namespace strata::engine {
namespace {

std::string param_label(const UnitSpec& u, std::size_t i) {
  if (i < u.param_names.size() && !u.param_names[i].empty()) return fmt::format("'{}'", u.param_names[i]);
  return fmt::format("{} of unit '{}'", i, u.name);
}

// A frozen parameter the store does not take (stages 0-2) is made where it is.
Status materialize_deferred(const at::Tensor& p, const ParamInit& init) {
  if (p.numel() == 0 || ChunkStore::has_storage(p)) return ok();
  if (!init) return make_error(ErrorCode::kInvalidArgument, "a parameter is deferred and no initializer was given");
  at::NoGradGuard no_grad;
  at::Tensor v = at::empty(p.sizes(), at::kFloat);
  init(p, v);
  ChunkStore::alloc_storage(p);
  p.detach().copy_(v);
  return ok();
}

// Note [parameter groups] (engine_options.h): each store parameter's group. Every
// trainable parameter is in exactly one; a frozen one listed nowhere is in group 0 (it
// is never stepped while frozen), and a frozen tensor no unit lists is passed over.
Status assign_param_groups(Engine::Impl& m, const std::unordered_map<const void*, std::size_t>& index_of,
                           std::size_t n_store) {
  const auto& groups = m.core.opt.param_groups;
  if (groups.empty()) return ok();
  constexpr std::uint32_t kNone = UINT32_MAX;
  std::vector<std::uint32_t> group_of(n_store, kNone);
  std::vector<StepKernel::Group> hyper;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    hyper.push_back({.lr_scale = groups[g].lr_scale, .weight_decay = groups[g].weight_decay});
    for (const at::Tensor& p : groups[g].params) {
      auto it = p.defined() ? index_of.find(p.unsafeGetTensorImpl()) : index_of.end();
      if (it == index_of.end()) {
        if (p.defined() && !p.requires_grad()) continue;  // frozen, and the units do not use it: as torch.optim
        return make_error(ErrorCode::kInvalidArgument,
                          "parameter group {} lists a tensor that is not a parameter of any unit", g);
      }
      const std::size_t i = it->second;
      if (m.store_index[i] < 0) continue;  // frozen at stages 0-2: the store does not hold it
      std::uint32_t& slot = group_of[static_cast<std::size_t>(m.store_index[i])];
      if (slot != kNone && slot != g) {
        return make_error(ErrorCode::kInvalidArgument, "parameter '{}' is in parameter groups {} and {}",
                          m.param_names[i], slot, g);
      }
      slot = static_cast<std::uint32_t>(g);
    }
  }
  for (std::size_t i = 0; i < m.all_params.size(); ++i) {
    if (m.store_index[i] < 0) continue;
    std::uint32_t& slot = group_of[static_cast<std::size_t>(m.store_index[i])];
    if (slot != kNone) continue;
    if (m.all_params[i].requires_grad()) {
      return make_error(ErrorCode::kInvalidArgument,
                        "trainable parameter '{}' is in no parameter group: list it in one, or freeze it",
                        m.param_names[i]);
    }
    slot = 0;
  }
  m.kernel.set_groups(std::move(hyper), std::move(group_of));
  return ok();
}

}  // namespace

// Note [streaming setup]: setup never holds more than one chunk beyond what placement
// keeps. The layout comes from the parameters' shapes alone (ChunkStore::plan), every
// chunk's tier is decided on paper (place()), the swap records are reserved, and only
// then are values copied in, one chunk at a time: a deferred parameter's made by the
// initializer, the chunk's fp32 master shard filled from them at full precision, and the
// chunk moved to its tiers (parameter shard and optimizer state written to nvme when
// placed there) before the next one starts. A model built deferred (deferred_init.h)
// therefore never exists whole in host memory, and neither does its optimizer state.
Status Engine::Impl::fill(const std::vector<at::Tensor>& chunked, const ParamInit& init) {
  ChunkRuntime& chunks = *core.chunks;
  const bool stage3 = core.stage() == 3;
  ShardState master;  // the chunk being filled
  auto fill_master = [&](const ChunkStore& store, std::size_t param, const at::Tensor& original) {
    const std::size_t c = store.layout().where[param].chunk;
    if (!master.master.defined()) master = ShardState::make(store.shard_elems(c), kernel);
    at::Tensor flat = original.reshape({-1});
    for (const auto& slot : chunks.slots(c)) {
      if (slot.param == param) {
        master.master.narrow(0, slot.shard_offset, slot.numel).copy_(flat.narrow(0, slot.param_offset, slot.numel));
      }
    }
  };
  auto place_chunk = [&](const ChunkStore& store, std::size_t ci) -> Status {
    const auto c = static_cast<std::uint32_t>(ci);
    ChunkRt& k = chunks[c];
    if (stage3) {  // this rank's shard (none when the master makes it); the full chunk goes
      if (!k.shard_from_master) {
        // A shard on the compute tier lives on the compute device; one off it in host
        // memory, aligned for the swap store (and pinned for a GPU: Note [pinned host
        // tensors]).
        const bool on_device = k.shard_tier == Tier::kCompute && !store.options().device.is_cpu();
        k.shard = on_device ? at::empty({store.shard_elems(c)},
                                        at::TensorOptions().dtype(store.options().compute_dtype).device(store.options().device))
                            : aligned_empty(store.shard_elems(c), store.options().compute_dtype,
                                            host_memory_for(store.options().device));
        k.shard.copy_(store.shard(store.full(c), c));
      }
      ChunkStore::free_storage(store.full(c));
    }
    STRATA_RETURN_IF_ERROR(chunks.materialize(c));
    if (k.trainable) optim->set_initial(c, std::move(master));
    master = ShardState{};
    STRATA_RETURN_IF_ERROR(optim->materialize(c));
    tiers::release_free_heap();  // Note [host heap]
    return ok();
  };
  ChunkStore::ValueSource values;
  if (init) values = [&](std::size_t param, at::Tensor& out) { init(chunked[param], out); };
  return chunks.store().fill(fill_master, place_chunk, values);
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Engine::~Engine() { clear_unit_hooks(this); }

Result<std::unique_ptr<Engine>> Engine::create(std::vector<at::Tensor> params, comm::Communicator& comm,
                                               EngineOptions options) {
  return create({UnitSpec{.name = "model", .params = std::move(params)}}, comm, std::move(options));
}

Result<std::unique_ptr<Engine>> Engine::create(std::vector<UnitSpec> units, comm::Communicator& comm,
                                               EngineOptions options, ParamInit init) {
  const int stage = options.stage;
  options.schedule.world = stage == 0 ? 1 : comm.world();
  options.swap.rank = comm.rank();
  STRATA_RETURN_IF_ERROR(options.validate());
  if (units.empty()) return make_error(ErrorCode::kInvalidArgument, "the engine needs at least one unit");
  auto impl = std::make_unique<Impl>(std::move(options), comm);
  Impl& m = *impl;
  m.n_units = units.size();
  EngineCore& core = m.core;
  const EngineOptions& o = core.opt;
  STRATA_ASSIGN_OR_RETURN(m.kernel, StepKernel::create(o.optimizer, o.optim_state_dtype));
  if (o.scheduler.type != SchedulerType::kNone) {
    STRATA_ASSIGN_OR_RETURN(LrSchedule s, LrSchedule::create(o.scheduler, o.optimizer.lr));
    m.lr_schedule = std::move(s);
    m.apply_schedule();
  }

  // Every distinct parameter once, in unit order (the forward order until a trace says
  // otherwise). A tensor listed twice, in one unit or two, is one parameter.
  std::unordered_map<const void*, std::size_t> index_of;
  std::vector<std::vector<std::size_t>> unit_params(units.size());
  for (std::size_t u = 0; u < units.size(); ++u) {
    if (units[u].name.empty()) units[u].name = fmt::format("unit{}", u);
    for (std::size_t i = 0; i < units[u].params.size(); ++i) {
      const at::Tensor& p = units[u].params[i];
      if (!p.defined() || p.is_sparse() || !p.is_contiguous()) {
        return make_error(ErrorCode::kInvalidArgument, "parameter {} must be a defined, dense, contiguous tensor",
                          param_label(units[u], i));
      }
      // Chunks hold the compute dtype and the masters fp32: a float64 model would train in
      // fp32 against the caller's float64 inputs, integer values would become floats.
      if (const at::ScalarType t = p.scalar_type(); t != at::kFloat && t != at::kBFloat16 && t != at::kHalf) {
        return make_error(ErrorCode::kInvalidArgument, "parameter {} is {}: the engine shards float32, bfloat16 and "
                          "float16 parameters (convert a float64 model with .float(); keep integer tensors that never "
                          "train in buffers)", param_label(units[u], i), c10::toString(t));
      }
      // Checked here, where the parameter has a name: the fill below would find it only
      // by its index. A stage-3 engine leaves its model's parameters released when it
      // closes (the values live in its shards, gone with it), so a second engine built on
      // that model lands here too.
      if (!init && p.numel() > 0 && !ChunkStore::has_storage(p)) {
        return make_error(ErrorCode::kInvalidArgument, "parameter {} holds no values and no initializer was given: "
                          "a model built deferred needs one, and a model whose stage-3 engine was closed keeps no "
                          "values (build a new model, then load the checkpoint the engine saved)",
                          param_label(units[u], i));
      }
      auto [it, fresh] = index_of.emplace(p.unsafeGetTensorImpl(), m.all_params.size());
      const bool named = i < units[u].param_names.size() && !units[u].param_names[i].empty();
      if (fresh) {
        m.all_params.push_back(p);
        m.param_names.push_back(named ? units[u].param_names[i] : fmt::format("param{}", it->second));
      } else if (named && m.param_names[it->second] == fmt::format("param{}", it->second)) {
        m.param_names[it->second] = units[u].param_names[i];  // first named where it is listed again
      }
      unit_params[u].push_back(it->second);
    }
  }
  // Stage 3 shards every parameter; stages 0-2 leave frozen ones as they are (a
  // deferred one gets its values here).
  std::vector<at::Tensor> chunked;
  std::uint64_t model_elems = 0;
  for (const at::Tensor& p : m.all_params) {
    const bool in_store = stage == 3 || p.requires_grad();
    if (!p.requires_grad()) m.frozen_at_build.push_back(m.store_index.size());
    m.store_index.push_back(in_store ? static_cast<int>(chunked.size()) : -1);
    if (!in_store) {
      STRATA_RETURN_IF_ERROR(materialize_deferred(p, init));
      continue;
    }
    chunked.push_back(p);
    model_elems += static_cast<std::uint64_t>(p.numel());
  }
  STRATA_RETURN_IF_ERROR(assign_param_groups(m, index_of, chunked.size()));
  // The compute device: the option, else where the parameters are (deferred ones have
  // no bytes and say nothing).
  if (!core.opt.compute_device) {
    core.opt.compute_device = c10::Device(c10::kCPU);
    for (const at::Tensor& p : chunked) {
      if (ChunkStore::has_storage(p)) {
        core.opt.compute_device = p.device();
        break;
      }
    }
    STRATA_RETURN_IF_ERROR(core.opt.validate_device(*core.opt.compute_device));
  }
  std::vector<plan::ParamAccess> uses;
  if (stage == 3) {
    for (const auto& ps : unit_params) {
      plan::ParamAccess a;
      for (std::size_t i : ps) a.params.push_back(static_cast<std::uint32_t>(m.store_index[i]));
      uses.push_back(std::move(a));
    }
  }
  ChunkStoreOptions so{.world = core.chunk_world(), .rank = stage == 0 ? 0 : comm.rank(), .compute_dtype = o.compute_dtype,
                       .device = *o.compute_device,
                       .packing = o.chunks,
                       .persistence_threshold_elems = stage == 3 ? o.schedule.persistence_threshold_elems : 0};
  if (so.packing.chunk_size_elems == 0 && so.packing.max_chunk_elems == 0) {
    so.packing.max_chunk_elems = plan::chunk_size_cap({.model_elems = model_elems,
                                                       .stage = stage,
                                                       .elem_bytes = c10::elementSize(o.compute_dtype),
                                                       .compute_budget_bytes = o.schedule.budget_bytes[0],
                                                       .prefetch_bucket_bytes = o.schedule.prefetch_bucket_bytes,
                                                       .reduce_bucket_elems = o.reduce_bucket_size});
  }
  STRATA_ASSIGN_OR_RETURN(auto store, ChunkStore::plan(chunked, so, uses));
  const std::uint64_t optim_bytes_per_elem =
      4 + m.kernel.state_names().size() * c10::elementSize(m.kernel.state_dtype());
  core.chunks = std::make_unique<ChunkRuntime>(std::move(store), stage < 3, optim_bytes_per_elem,
                                               c10::elementSize(o.grad_shard_dtype), core.opt.schedule, core.tiers,
                                               core.storage, core.swap);
  core.pool = std::make_unique<ThreadPool>(static_cast<std::size_t>(std::max(0, o.optimizer_threads)));
  m.optim = std::make_unique<OptimStateHolder>(core, m.kernel);
  m.reducer = std::make_unique<GradReducer>(core);
  GradReducer* reducer = m.reducer.get();
  // Room for a gather that does not fit: buffers whose reductions are in flight, then
  // the storage cache.
  OptimStateHolder* holder = m.optim.get();
  Impl* self = &m;
  m.gatherer = std::make_unique<Gatherer>(
      core,
      [reducer, &core]() -> Status {
        STRATA_RETURN_IF_ERROR(reducer->drain());
        core.storage.release_all();
        return ok();
      },
      [holder](std::uint32_t c) -> const at::Tensor& { return holder->memory_master(c); },
      Gatherer::Edits{.any = [self](std::uint32_t c) { return self->edited_in(c); },
                      .take = [self](std::uint32_t c, const at::Tensor& slice) {
                        return self->take_gathered_edits(c, slice);
                      }});
  m.stepper = std::make_unique<StepDriver>(core, m.kernel, *m.reducer, *m.optim, *m.gatherer);
  std::vector<UnitRt> rts;
  for (std::size_t u = 0; u < units.size(); ++u) {
    std::vector<std::uint32_t> ps;  // the unit's parameters the store holds (stages 0-2: trainable ones)
    for (std::size_t i : unit_params[u])
      if (m.store_index[i] >= 0) ps.push_back(static_cast<std::uint32_t>(m.store_index[i]));
    rts.push_back(UnitRt{.name = units[u].name, .chunks = plan::chunks_of(core.chunks->store().layout(), ps),
                         .params = ps, .leaf = units[u].leaf});
  }
  if (stage < 3) {
    for (const UnitRt& r : rts) m.unit_chunks.push_back(r.chunks);
  } else {
    m.access = std::make_unique<AccessDriver>(
        core, *m.gatherer, *m.reducer, std::move(rts),
        AccessDriver::Callbacks{.backward_activity = [self] { self->open_backward(); },
                                .refit = [self] { return self->core.opt.placement == Placement::kAuto ? self->fit_auto() : ok(); }});
  }
  STRATA_RETURN_IF_ERROR(m.place());
  STRATA_RETURN_IF_ERROR(m.fill(chunked, init));
  STRATA_RETURN_IF_ERROR(m.reducer->setup([self] { self->open_backward(); }));
  if (o.wrap) STRATA_RETURN_IF_ERROR(m.stepper->wrap(o.wrap));
  STRATA_RETURN_IF_ERROR(m.check_fits());
  m.index_chunk_params();
  m.record_param_versions();
  const plan::ChunkLayout& layout = core.chunks->store().layout();
  log::debug("engine: stage {}, {} parameters in {} chunks of {} elements ({:.1f}% padding), {} units, state {}", stage,
             format_count(layout.used_elems), layout.chunks.size(), format_count(layout.chunk_size_elems),
             100 * layout.waste_ratio, units.size(), format_bytes(m.optim->bytes()));
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

namespace {
// Note [gathered parameters] (state_dict.cpp).
ErrorReturn gathered_error(std::string_view what) {
  return make_error(ErrorCode::kFailedPrecondition, "{} while parameters are gathered (strata.GatheredParameters): "
                    "leave the context first", what);
}
}  // namespace

Status Engine::pre_forward(UnitId unit) {
  Impl& m = *impl_;
  if (unit < 0 || static_cast<std::size_t>(unit) >= m.n_units) {
    return make_error(ErrorCode::kInvalidArgument, "pre_forward: no unit {}", unit);
  }
  if (m.gathered > 0) return gathered_error("a forward");
  STRATA_RETURN_IF_ERROR(m.end_failed_backward());
  if (!m.step_open && at::GradMode::is_enabled()) {
    m.step_open = true;
    m.step_t0 = Clock::now();
    m.core.trace.begin_step();
  }
  if (!m.access && at::GradMode::is_enabled()) m.reducer->note_forward_use(m.unit_chunks[static_cast<std::size_t>(unit)]);
  return m.access ? m.access->pre_forward(unit) : ok();
}

Status Engine::post_forward(UnitId unit, std::span<const at::Tensor> outputs) {
  return impl_->access ? impl_->access->post_forward(unit, outputs) : ok();
}

Status Engine::abort_forward() { return impl_->access ? impl_->access->abort_forward() : ok(); }

Result<bool> Engine::adopt_param(const at::Tensor& param) {
  Impl& m = *impl_;
  if (!m.access) return false;
  STRATA_ASSIGN_OR_RETURN(const std::size_t i, m.param_index(param));
  if (m.store_index[i] < 0) return false;
  STRATA_ASSIGN_OR_RETURN(const std::optional<UnitId> u,
                          m.access->adopt(static_cast<std::uint32_t>(m.store_index[i])));
  if (!u) return false;
  log::debug("stage 3: parameter '{}' is used in the forward of unit '{}', which gathers it from now on",
             m.param_names[i], m.access->units()[static_cast<std::size_t>(*u)].name);
  return true;
}

void Engine::Impl::open_backward() {
  if (in_backward) return;
  in_backward = true;
  ++backward_sessions;
  backward_t0 = Clock::now();
  // A plain loss.backward() (a front end's user may call it) is right only when there is
  // nothing to scale: no loss scaling and no accumulation.
  unscaled_backward = !scaling_backward && (stepper->scaler().scale() != 1.0 || core.opt.gradient_accumulation_steps != 1);
  if (step_open) core.cur.forward_s += std::chrono::duration<double>(backward_t0 - step_t0).count();
  core.trace.begin_step();
  core.errors.check(reducer->begin_backward(at_boundary(), 1.0 / stepper->scaler().scale()));
  if (at_boundary()) core.errors.check(stepper->read_early());  // Note [early state reads]
  // A plain loss.backward(): the session ends when autograd has finished the graph, still
  // inside backward(). The callback joins the graph task running now, so Engine::backward
  // ends its sessions itself when loss.backward() returns: its first hook may fire in a
  // nested graph task (a reentrant checkpoint's backward), which ends before the rest.
  if (!scaling_backward)
    torch::autograd::Engine::get_default_engine().queue_callback([this] { core.errors.check(close_backward()); });
}

// Note [the model's exceptions]: the model's own backward may raise (a custom autograd
// Function refusing a batch, a dtype mismatch in the caller's graph). Plain PyTorch
// hands the caller that exception, and the gradients made before it stay in .grad until
// zero_grad(): a loop that catches it and skips the batch trains as if it never came.
// So: backward() ends a session that raised as a whole one ends (its hooks saw part of
// it), returns an error naming the exception and keeps the exception itself for the
// front end to rethrow (take_backward_exception); the partial gradients stay until
// zero_grad() or step(). A plain loss.backward() that raised leaves its session open
// (autograd runs no final callbacks after an error): the caller's next call into the
// engine from outside autograd ends it (end_failed_backward; inside autograd, as in a
// reentrant checkpoint's forward, the session is live). An error a strata hook recorded
// is strata's, and is returned as it is. Before, the session stayed open: zero_grad()
// kept the partial gradients and the next step summed them in without a word (or, after
// a plain backward, refused to run "during a backward").
Status Engine::Impl::end_failed_backward() {
  if (!in_backward || torch::autograd::get_current_graph_task_exec_info() != nullptr) return ok();
  return close_backward();
}

Status Engine::Impl::close_backward() {
  in_backward = false;
  step_open = false;
  backward_done = true;
  Status st = access ? access->end_backward() : reducer->end_backward();
  core.cur.backward_s += std::chrono::duration<double>(Clock::now() - backward_t0).count();
  if (st && std::exchange(unscaled_backward, false)) {
    return make_error(ErrorCode::kFailedPrecondition, "a plain loss.backward() with {}: call the engine's "
                      "backward(loss), which scales the loss", core.opt.gradient_accumulation_steps != 1
                          ? fmt::format("gradient accumulation over {} micro-steps", core.opt.gradient_accumulation_steps)
                          : std::string("fp16 loss scaling"));
  }
  return st;
}

std::exception_ptr Engine::take_backward_exception() { return std::exchange(impl_->backward_exception, nullptr); }

Status Engine::backward(const at::Tensor& loss, const BackwardOptions& options) {
  Impl& m = *impl_;
  if (!loss.defined() || loss.numel() != 1) return make_error(ErrorCode::kInvalidArgument, "backward needs a scalar loss");
  STRATA_RETURN_IF_ERROR(m.end_failed_backward());
  if (m.access && !m.access->in_step()) {
    if (m.backward_done) {  // Note [one backward per forward] (access_driver.cpp)
      return make_error(ErrorCode::kFailedPrecondition, "backward() after a backward already went through the "
                        "model since its forward (torch.autograd.grad through the model, as a gradient penalty "
                        "computes, or a loss.backward()): at stage 3 a forward takes one backward; train at stage "
                        "1 or 2 to run these");
    }
    return make_error(ErrorCode::kFailedPrecondition, "backward() without a forward through the model's units");
  }
  const double factor =
      m.stepper->scaler().scale() / (options.scale_by_window ? m.core.opt.gradient_accumulation_steps : 1);
  const std::uint64_t sessions = m.backward_sessions;
  m.backward_exception = nullptr;
  m.scaling_backward = true;
  std::optional<Error> raised;
  try {
    (factor == 1.0 ? loss : loss * factor).backward({}, options.retain_graph);
  } catch (const std::exception& e) {
    m.scaling_backward = false;
    if (std::optional<Error> recorded = m.core.errors.take()) {
      m.in_backward = false;
      m.step_open = false;
      return make_error(std::move(*recorded));
    }
    // Note [the model's exceptions]: the model's own; the session ends below.
    m.backward_exception = std::current_exception();
    const std::string msg = e.what();
    raised = Error(ErrorCode::kInternal, fmt::format("the model's backward raised: {}", msg.substr(0, msg.find('\n'))));
  }
  m.scaling_backward = false;
  Status st = ok();
  if (m.backward_sessions != sessions) {
    if (m.in_backward) st = m.close_backward();
  } else {  // No hook ran (the loss depends on nothing the engine holds): end the step here.
    m.backward_t0 = Clock::now();
    st = m.reducer->begin_backward(m.at_boundary(), 1.0 / m.stepper->scaler().scale());
    if (st) st = m.close_backward();
  }
  if (!st && raised) {  // strata's failure comes first; the model's exception is its note
    m.backward_exception = nullptr;
    return make_error(std::move(st).error().with_note(raised->to_string()));
  }
  if (raised) return make_error(std::move(*raised));
  return st;
}

// Note [zero_grad]: a backward adds into the gradient shards until step() consumes them,
// as autograd adds into .grad until the optimizer's zero_grad(). A backward that no step()
// will follow (the generator's loss of a GAN flows back through the discriminator, whose
// own engine gets its gradients) must be taken out by zero_grad(), or the next step sums
// it in. The engine cannot subtract one backward from an accumulation window's sum, so
// zero_grad() discards everything only at a window's start (no micro-step counted yet),
// refuses inside a window when an uncounted backward is there, and does nothing when
// there is none (torch loops call it before every backward, DeepSpeed's after every step).
Status Engine::zero_grad() {
  Impl& m = *impl_;
  STRATA_RETURN_IF_ERROR(m.end_failed_backward());
  if (m.in_backward) return make_error(ErrorCode::kFailedPrecondition, "zero_grad() during a backward");
  if (!m.backward_done) return ok();
  if (m.window_micro_steps != 0) {
    return make_error(ErrorCode::kFailedPrecondition, "zero_grad() after a backward that no step() counted, inside "
                      "an accumulation window of {} micro-steps (micro-step {}): the engine cannot take one backward "
                      "out of the window's sum; call step() after every backward",
                      m.core.opt.gradient_accumulation_steps, m.window_micro_steps + 1);
  }
  STRATA_RETURN_IF_ERROR(m.reducer->discard());
  m.backward_done = false;
  return ok();
}

Result<double> Engine::clip_grad_norm(double max_norm, double norm_type) {
  Impl& m = *impl_;
  STRATA_RETURN_IF_ERROR(m.end_failed_backward());
  if (m.in_backward || !m.backward_done) {
    return make_error(ErrorCode::kFailedPrecondition, "clip_grad_norm() without a finished backward since the last "
                      "step(): call it between backward(loss) and step()");
  }
  if (!m.at_boundary()) {
    return make_error(ErrorCode::kFailedPrecondition, "clip_grad_norm() in micro-step {} of an accumulation window of "
                      "{}: the gradients are whole only in the window's last micro-step; call it there, before its "
                      "step() (as torch loops clip just before optimizer.step())", m.window_micro_steps + 1,
                      m.core.opt.gradient_accumulation_steps);
  }
  return m.stepper->clip_grad_norm(max_norm, norm_type);
}

Result<StepResult> Engine::step() {
  Impl& m = *impl_;
  StepResult r;
  r.loss_scale = m.stepper->scaler().scale();
  r.step = m.step_count;
  if (m.gathered > 0) return gathered_error("step()");
  STRATA_RETURN_IF_ERROR(m.end_failed_backward());
  if (!std::exchange(m.backward_done, false)) {
    return make_error(ErrorCode::kFailedPrecondition, "step() without a backward since the last step(): each "
                      "micro-step is forward, backward(loss), then step()");
  }
  STRATA_RETURN_IF_ERROR(m.check_still_frozen());
  STRATA_RETURN_IF_ERROR(m.adopt_param_edits());  // Note [edited parameters] (param_edits.cpp)
  const bool boundary = m.at_boundary();
  if (!boundary) {
    ++m.window_micro_steps;
    return r;
  }
  m.window_micro_steps = 0;
  r.boundary = true;
  const auto t0 = Clock::now();
  const plan::LinkBytes before = m.core.cur.moved;
  STRATA_RETURN_IF_ERROR(m.stepper->step(r));
  if (r.applied) {
    ++m.step_count;
    m.apply_schedule();
  }
  m.reducer->after_step();
  if (m.access) STRATA_RETURN_IF_ERROR(m.access->after_optimizer_step());
  m.core.cur.optimizer_s += std::chrono::duration<double>(Clock::now() - t0).count();
  m.core.cur.optimizer_moved.nvme_to_host += m.core.cur.moved.nvme_to_host - before.nvme_to_host;
  m.core.cur.optimizer_moved.host_to_nvme += m.core.cur.moved.host_to_nvme - before.host_to_nvme;
  m.core.trace.add(StepTrace::kOptimizer, "optimizer step", t0, Clock::now());
  m.finish_metrics();
  m.core.storage.end_step();
  m.record_param_versions();  // a front end may write the parameters it holds (ShardedOptimizer)
  m.heap_trim.after_step();  // Note [host heap]
  STRATA_RETURN_IF_ERROR(m.core.trace.end_step(m.core.comm.rank()));
  r.step = m.step_count;
  return r;
}

void Engine::Impl::apply_schedule() {
  if (!lr_schedule) return;
  kernel.set_lr(lr_schedule->lr(step_count));
  if (auto b = lr_schedule->betas(step_count)) kernel.set_betas(*b);
}

void Engine::Impl::finish_metrics() {
  StepMetrics& c = core.cur;
  c.step = step_count;
  for (Tier t : plan::kAllTiers) {
    c.peak[plan::tier_index(t)] = core.tiers.peak(t);
    c.peak_grad_bytes += core.tiers.peak(t, StateKind::kGrads);
  }
  c.prefetch_hit_rate = c.gathers ? static_cast<double>(c.prefetch_hits) / static_cast<double>(c.gathers) : 0.0;
  if (access) {
    c.trace_hash = access->trace().complete() ? access->trace().hash() : 0;
    c.trace_invalidations = access->trace().n_warnings();
  }
  last = c;
  c = StepMetrics{};
  core.tiers.reset_peak();
}

int Engine::stage() const { return impl_->core.opt.stage; }
const EngineOptions& Engine::options() const { return impl_->core.opt; }
const std::vector<at::Tensor>& Engine::params() const { return impl_->all_params; }
const ChunkStore& Engine::store() const { return impl_->core.chunks->store(); }
const plan::Schedule* Engine::schedule() const { return impl_->access ? impl_->access->schedule() : nullptr; }
const StepMetrics& Engine::last_metrics() const { return impl_->last; }
void Engine::trace_next_step(std::string path) { impl_->core.trace.arm(std::move(path)); }
const LossScaler& Engine::loss_scaler() const { return impl_->stepper->scaler(); }
std::int64_t Engine::steps() const { return impl_->step_count; }
bool Engine::at_boundary() const { return impl_->at_boundary(); }

// Note [accumulation boundary]: step() steps at the end of an accumulation window, which
// the engine counts (every gradient_accumulation_steps-th micro-step) unless the caller
// says it (set_boundary, DeepSpeed's set_gradient_accumulation_boundary: a backend whose
// caller sends N backwards and then one step marks the last). Each backward's loss is
// still divided by gradient_accumulation_steps, as DeepSpeed's is (scale_wrt_gas=False
// leaves it whole). window_micro_steps counts the step() calls of the window so far, so
// zero_grad() knows a window's start either way, and counting resumes from the last
// boundary when the caller hands it back (nullopt).
void Engine::set_boundary(std::optional<bool> is_boundary) { impl_->boundary_override = is_boundary; }
std::uint64_t Engine::state_bytes() const { return impl_->optim->bytes(); }

MemoryByKind Engine::memory_by_kind() const {
  MemoryByKind out{};
  for (Tier t : plan::kAllTiers)
    for (StateKind k : plan::kAllStateKinds) out[plan::tier_index(t)][plan::kind_index(k)] = impl_->core.tiers.used(t, k);
  return out;
}

std::uint64_t Engine::shard_bytes() const {
  const ChunkRuntime& chunks = *impl_->core.chunks;
  std::uint64_t b = 0;
  for (std::uint32_t c = 0; c < chunks.size(); ++c)
    b += chunks[c].residency == Residency::kReplicated ? chunks.full_bytes(c) : chunks.shard_bytes(c);
  return b;
}

}  // namespace strata::engine
