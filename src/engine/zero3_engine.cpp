// Zero3Engine: setup, the module hooks, and the backward/step entry points.
#include <unordered_set>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include "strata/base/log.h"
#include "strata/base/units.h"
#include "strata/engine/uses_params.h"
#include "zero3_impl.h"

namespace strata::engine {

[[noreturn]] void throw_error(const Error& e) { TORCH_CHECK(false, e.to_string()); }

namespace {

// Converts a c10::Error thrown by a hook back into the Error it carried.
Error from_exception(const std::exception& e, std::string_view what) {
  const std::string msg = e.what();
  return Error(ErrorCode::kInternal, fmt::format("{}: {}", what, msg.substr(0, msg.find('\n'))));
}

}  // namespace

Result<Zero3Options> Zero3Options::from_config(const Config& cfg, int world) {
  Zero3Options o;
  o.optimizer = cfg.optimizer;
  o.fp16 = cfg.fp16;
  o.compute_dtype = cfg.bf16.enabled ? at::kBFloat16 : cfg.fp16.enabled ? at::kHalf : at::kFloat;
  o.gradient_clipping = cfg.gradient_clipping;
  o.gradient_accumulation_steps = static_cast<int>(cfg.gradient_accumulation_steps);
  o.optimizer_threads = cfg.strata.optimizer_threads;
  o.chunks.compute_dtype = o.compute_dtype;
  o.chunks.chunk_size_elems = cfg.strata.chunk_size;
  o.chunks.search_range_elems = cfg.strata.chunk_search_range;
  o.chunks.persistence_threshold_elems = cfg.zero_optimization.stage3_param_persistence_threshold;
  o.chunks.materialize_grads = false;
  STRATA_ASSIGN_OR_RETURN(o.schedule, plan::ScheduleOptions::from_config(
                                          cfg, world, static_cast<std::uint32_t>(c10::elementSize(o.compute_dtype))));
  o.placement = cfg.strata.placement;
  const auto& z = cfg.zero_optimization;
  o.param_device = z.offload_param.device;
  o.optim_device = z.offload_optimizer.device;
  o.offload_param_frac = cfg.strata.offload_param_frac;
  o.offload_optim_frac = cfg.strata.offload_optim_frac;
  o.swap = io::SwapStoreOptions::from_config(
      cfg, 0, !z.offload_optimizer.nvme_path.empty() ? z.offload_optimizer.nvme_path : z.offload_param.nvme_path);
  STRATA_RETURN_IF_ERROR(o.validate());
  return o;
}

Status Zero3Options::validate() const {
  STRATA_RETURN_IF_ERROR(kernel_dtype(compute_dtype));
  if (gradient_accumulation_steps < 1) return make_error(ErrorCode::kInvalidArgument, "gradient_accumulation_steps must be >= 1");
  if ((param_device == OffloadDevice::kNvme || optim_device == OffloadDevice::kNvme) && swap.nvme_path.empty()) {
    return make_error(ErrorCode::kInvalidArgument, "nvme offload needs an nvme_path");
  }
  return schedule.validate();
}

std::vector<UnitSpec> default_units(torch::nn::Module& model) {
  std::vector<UnitSpec> units;
  for (const auto& child : model.named_children()) {
    std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> mods;
    if (auto* list = dynamic_cast<torch::nn::ModuleListImpl*>(child.value().get())) {
      for (const auto& sub : list->named_children()) mods.emplace_back(child.key() + "." + sub.key(), sub.value());
    } else {
      mods.emplace_back(child.key(), child.value());
    }
    for (auto& [name, m] : mods) {
      UnitSpec u{.module = m, .name = name};
      if (auto* extra = dynamic_cast<UsesParams*>(m.get())) u.extra_params = extra->used_params();
      if (!m->parameters().empty() || !u.extra_params.empty()) units.push_back(std::move(u));
    }
  }
  return units;
}

Zero3Engine::Zero3Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Zero3Engine::~Zero3Engine() {
  for (const UnitRt& u : impl_->units) set_module_hooks(*u.spec.module, nullptr);
}

Result<std::unique_ptr<Zero3Engine>> Zero3Engine::create(std::vector<UnitSpec> units, comm::Communicator& comm,
                                                         Zero3Options options) {
  STRATA_RETURN_IF_ERROR(options.validate());
  if (units.empty()) return make_error(ErrorCode::kInvalidArgument, "ZeRO-3 needs at least one unit module");
  options.chunks.world = comm.world();
  options.chunks.rank = comm.rank();
  options.chunks.compute_dtype = options.compute_dtype;
  options.chunks.materialize_grads = false;
  // A searched chunk size must leave room in a budgeted compute tier: the chunk in use,
  // its gradient buffer and a prefetched successor. A quarter of the budget per chunk
  // keeps that possible; without the bound a small model packs into one chunk larger
  // than the whole budget. Parameters larger than the bound still get their own chunk.
  if (options.chunks.chunk_size_elems == 0 && options.chunks.max_chunk_elems == 0 &&
      options.schedule.budget_bytes[0] > 0) {
    options.chunks.max_chunk_elems =
        std::max<std::uint64_t>(1, options.schedule.budget_bytes[0] / 4 / c10::elementSize(options.compute_dtype));
  }
  options.schedule.world = comm.world();
  options.swap.rank = comm.rank();
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.opt = options;
  m.comm = &comm;
  m.tiers.set_budgets(options.schedule.budget_bytes);
  STRATA_ASSIGN_OR_RETURN(m.kernel, StepKernel::create(options.optimizer));
  m.scaler = LossScaler(options.fp16);

  // Parameters in unit order (the forward order until a trace says otherwise), each
  // once; a unit's parameters are its own (recursively) plus any it uses unregistered.
  std::vector<at::Tensor> params;
  std::unordered_map<const void*, std::uint32_t> index_of;
  std::vector<plan::ParamAccess> uses;
  for (std::size_t u = 0; u < units.size(); ++u) {
    UnitRt rt{.spec = units[u], .id = static_cast<int>(u)};
    if (rt.spec.name.empty()) rt.spec.name = fmt::format("unit{}", u);
    std::vector<at::Tensor> ps = units[u].module->parameters(/*recurse=*/true);
    ps.insert(ps.end(), units[u].extra_params.begin(), units[u].extra_params.end());
    plan::ParamAccess access;
    for (const at::Tensor& p : ps) {
      auto [it, fresh] = index_of.emplace(p.unsafeGetTensorImpl(), static_cast<std::uint32_t>(params.size()));
      if (fresh) params.push_back(p);
      if (std::find(rt.params.begin(), rt.params.end(), it->second) == rt.params.end()) rt.params.push_back(it->second);
      access.params.push_back(it->second);
    }
    uses.push_back(std::move(access));
    m.unit_of[units[u].module.get()] = static_cast<int>(u);
    m.units.push_back(std::move(rt));
  }

  // Pack, then per chunk take the fp32 master shard and this rank's parameter shard and
  // free the full chunk (ChunkHook), so setup never holds more than one extra chunk.
  auto fill_master = [&m](const ChunkStore& store, std::size_t param, const at::Tensor& original) {
    const std::size_t c = store.layout().where[param].chunk;
    while (m.chunks.size() <= c) m.chunks.emplace_back();
    ShardState& s = m.chunks[c].optim;
    if (!s.master.defined()) s = ShardState::make(store.shard_elems(c), m.kernel);
    at::Tensor flat = original.reshape({-1});
    for (const auto& slot : store.shard_slots(c, store.options().rank)) {
      if (slot.param == param) {
        s.master.narrow(0, slot.shard_offset, slot.numel).copy_(flat.narrow(0, slot.param_offset, slot.numel));
      }
    }
  };
  auto take_shard = [&m](const ChunkStore& store, std::size_t c) {
    while (m.chunks.size() <= c) m.chunks.emplace_back();
    m.chunks[c].shard = store.shard(store.full(c), c).clone();
    ChunkStore::free_storage(store.full(c));
  };
  STRATA_ASSIGN_OR_RETURN(m.store, ChunkStore::create(params, options.chunks, uses, fill_master, take_shard));
  for (UnitRt& u : m.units) {
    std::vector<std::uint32_t> ps(u.params.begin(), u.params.end());
    u.chunks = plan::chunks_of(m.store->layout(), ps);
    // Units whose module tree contains this unit's module (nesting).
    for (const UnitRt& outer : m.units) {
      if (outer.id == u.id) continue;
      for (const auto& sub : outer.spec.module->modules(/*include_self=*/false)) {
        if (sub.get() == u.spec.module.get()) u.ancestors.push_back(outer.id);
      }
    }
  }
  m.param_steps = ParamSteps(params.size());
  m.pool = std::make_unique<ThreadPool>(static_cast<std::size_t>(std::max(0, options.optimizer_threads)));
  STRATA_RETURN_IF_ERROR(m.place(options));

  std::unique_ptr<Zero3Engine> eng(new Zero3Engine(std::move(impl)));
  eng->impl_->install_grad_hooks();
  for (const UnitRt& u : eng->impl_->units) set_module_hooks(*u.spec.module, eng.get());
  log::debug("zero3: {} parameters in {} chunks of {} elements ({:.1f}% padding), {} units, rank shard {}",
            format_count(eng->impl_->store->layout().used_elems), eng->impl_->store->num_chunks(),
            format_count(eng->impl_->store->layout().chunk_size_elems), 100 * eng->impl_->store->layout().waste_ratio,
            eng->impl_->units.size(), format_bytes(eng->shard_bytes()));
  return eng;
}

Result<std::unique_ptr<Zero3Engine>> shard(torch::nn::Module& model, comm::Communicator& comm, Zero3Options options,
                                           std::vector<UnitSpec> units) {
  if (units.empty()) units = default_units(model);
  // Every trainable parameter must belong to a unit, or nothing would gather it.
  std::unordered_set<const void*> covered;
  for (const UnitSpec& u : units) {
    for (const auto& p : u.module->parameters()) covered.insert(p.unsafeGetTensorImpl());
    for (const auto& p : u.extra_params) covered.insert(p.unsafeGetTensorImpl());
  }
  for (const auto& p : model.named_parameters()) {
    if (!covered.contains(p.value().unsafeGetTensorImpl())) {
      return make_error(ErrorCode::kInvalidArgument,
                        "parameter {} is not in any unit; call its module through strata::engine::forward() and "
                        "list it as a unit",
                        p.key());
    }
  }
  return Zero3Engine::create(std::move(units), comm, std::move(options));
}

void Zero3Engine::pre_forward(const torch::nn::Module& unit) {
  const int u = impl_->unit_of.at(&unit);
  impl_->fwd_stack.emplace_back(u, impl_->on_access(u, plan::Phase::kForward));
}

void Zero3Engine::post_forward(const torch::nn::Module& unit, at::Tensor& output) {
  Impl& m = *impl_;
  const int u = m.unit_of.at(&unit);
  TORCH_INTERNAL_ASSERT(!m.fwd_stack.empty() && m.fwd_stack.back().first == u, "unbalanced unit forward");
  const auto at = m.fwd_stack.back().second;
  m.fwd_stack.pop_back();
  m.finish_access(u, plan::Phase::kForward, at);
  if (!at::GradMode::is_enabled()) return;  // inference: no backward to prepare
  if (output.requires_grad()) {
    // The pre-backward hook: the gradient of this unit's output arrives just before the
    // unit's own backward runs, so that is when its chunks must be gathered again.
    Impl* impl = &m;
    output.register_hook([impl, u](const at::Tensor&) { impl->begin_unit_backward(u); });
  }
}

Status Zero3Engine::backward(const at::Tensor& loss) {
  Impl& m = *impl_;
  if (!loss.defined() || loss.numel() != 1) return make_error(ErrorCode::kInvalidArgument, "backward needs a scalar loss");
  if (!m.in_step) return make_error(ErrorCode::kFailedPrecondition, "backward() without a forward through the model");
  m.in_backward = true;
  m.backward_t0 = Clock::now();
  m.cur.forward_s += std::chrono::duration<double>(m.backward_t0 - m.step_t0).count();
  const double factor = m.scaler.scale() / m.opt.gradient_accumulation_steps;
  try {
    (factor == 1.0 ? loss : loss * factor).backward();
    m.on_backward_end();
  } catch (const std::exception& e) {
    m.in_backward = false;
    return make_error(from_exception(e, "backward failed"));
  }
  m.in_backward = false;
  m.cur.backward_s += std::chrono::duration<double>(Clock::now() - m.backward_t0).count();
  return m.end_trace_step();
}

Result<double> Zero3Engine::clip_grad_norm(double max_norm, double norm_type) {
  Impl& m = *impl_;
  STRATA_ASSIGN_OR_RETURN(kernels::GradStats g, m.global_stats(1.0 / m.scaler.scale()));
  m.stats = g;
  const double norm = g.norm(norm_type);
  m.clip_coef = kernels::clip_coefficient(norm, max_norm);
  return norm;
}

Result<StepResult> Zero3Engine::step() {
  Impl& m = *impl_;
  StepResult r;
  r.loss_scale = m.scaler.scale();
  r.step = m.step_count;
  const bool boundary = (m.micro_step + 1) % m.opt.gradient_accumulation_steps == 0;
  ++m.micro_step;
  if (!boundary) return r;
  r.boundary = true;
  const auto t0 = Clock::now();
  if (!m.stats) {
    STRATA_ASSIGN_OR_RETURN(m.stats, m.global_stats(1.0 / m.scaler.scale()));
  }
  const kernels::GradStats stats = *m.stats;
  r.grad_norm = stats.norm(2.0);
  const double coef = m.clip_coef ? *m.clip_coef : kernels::clip_coefficient(r.grad_norm, m.opt.gradient_clipping);
  m.stats.reset();
  m.clip_coef.reset();
  r.applied = m.scaler.update(stats.nonfinite);
  if (r.applied) {
    STRATA_RETURN_IF_ERROR(m.optimizer_step(coef / r.loss_scale));
    ++m.step_count;
  } else {
    log::warn("step {}: gradient overflow at loss scale {}; step skipped, scale now {}", m.step_count, r.loss_scale,
              m.scaler.scale());
  }
  for (ChunkRt& k : m.chunks)
    if (k.grad_shard.defined()) k.grad_shard.zero_();
  m.cur.optimizer_s += std::chrono::duration<double>(Clock::now() - t0).count();
  m.trace_out.add(StepTrace::kOptimizer, "optimizer step", t0, Clock::now());
  // The step's metrics are final now.
  m.cur.step = m.step_count;
  m.cur.peak = {m.tiers.peak(Tier::kCompute), m.tiers.peak(Tier::kHost), m.tiers.peak(Tier::kNvme)};
  m.cur.prefetch_hit_rate = m.cur.gathers ? static_cast<double>(m.cur.prefetch_hits) / m.cur.gathers : 0.0;
  m.cur.trace_hash = m.trace.complete() ? m.trace.hash() : 0;
  m.cur.trace_invalidations = m.trace.n_warnings();
  m.last = m.cur;
  m.cur = StepMetrics{};
  m.tiers.reset_peak();
  STRATA_RETURN_IF_ERROR(m.trace_out.end_step(m.comm->rank()));
  r.step = m.step_count;
  return r;
}

const StepMetrics& Zero3Engine::last_metrics() const { return impl_->last; }
const ChunkStore& Zero3Engine::store() const { return *impl_->store; }
const plan::Schedule* Zero3Engine::schedule() const { return impl_->schedule ? &*impl_->schedule : nullptr; }
void Zero3Engine::trace_next_step(std::string path) { impl_->trace_out.arm(std::move(path)); }
double Zero3Engine::lr() const { return impl_->kernel.lr(); }
void Zero3Engine::set_lr(double lr) { impl_->kernel.set_lr(lr); }

std::array<std::array<std::uint64_t, 4>, 3> Zero3Engine::memory_by_kind() const {
  std::array<std::array<std::uint64_t, 4>, 3> out{};
  for (Tier t : plan::kAllTiers) {
    for (const auto& [holder, bytes] : impl_->tiers.holders(t, SIZE_MAX)) {
      // Holder names say what they hold (Impl::materialize, start_gather, ...).
      const std::size_t kind = holder.starts_with("param shard") || holder.starts_with("gathered") ? 0
                               : holder.starts_with("grad")                                      ? 1
                               : holder.starts_with("optimizer")                                 ? 2
                                                                                                 : 3;
      out[plan::tier_index(t)][kind] += bytes;
    }
  }
  return out;
}

std::uint64_t Zero3Engine::shard_bytes() const {
  std::uint64_t b = 0;
  for (std::size_t c = 0; c < impl_->chunks.size(); ++c) {
    b += static_cast<std::uint64_t>(impl_->store->shard_elems(c)) * c10::elementSize(impl_->opt.compute_dtype);
  }
  return b;
}

}  // namespace strata::engine
