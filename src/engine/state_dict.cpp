// Engine: consolidated parameters, and the optimizer state as a torch::optim optimizer
// (consolidation onto one rank, and loading one saved at any world size); Lion's is a
// strata::engine::Lion (lion.h) and Lamb's a strata::engine::Lamb (lamb.h), LibTorch
// having neither.
#include <algorithm>
#include <array>
#include <optional>
#include <tuple>

#include <ATen/ATen.h>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include "engine_impl.h"
#include "strata/engine/lamb.h"
#include "strata/engine/lion.h"
#include "strata/comm/torch_compat.h"
#include "strata/comm/communicator.h"

namespace strata::engine {
namespace {

// A group's options: the config's, with the engine's current lr, weight decay, betas and
// momentum (which schedules may have moved).
std::unique_ptr<torch::optim::OptimizerOptions> make_options(OptimizerType type, const OptimizerConfig& c, double lr,
                                                             double weight_decay, const StepKernel& k) {
  const auto betas = std::make_tuple(k.betas()[0], k.betas()[1]);
  switch (type) {
    case OptimizerType::kAdam:
      return std::make_unique<torch::optim::AdamOptions>(
          torch::optim::AdamOptions(lr).betas(betas).eps(c.eps).weight_decay(weight_decay).amsgrad(c.amsgrad));
    case OptimizerType::kAdamW:
      return std::make_unique<torch::optim::AdamWOptions>(
          torch::optim::AdamWOptions(lr).betas(betas).eps(c.eps).weight_decay(weight_decay).amsgrad(c.amsgrad));
    case OptimizerType::kSGD:
      return std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(lr)
                                                            .momentum(k.momentum())
                                                            .dampening(c.dampening)
                                                            .weight_decay(weight_decay)
                                                            .nesterov(c.nesterov));
    case OptimizerType::kAdagrad:
      return std::make_unique<torch::optim::AdagradOptions>(torch::optim::AdagradOptions(lr)
                                                                .lr_decay(c.lr_decay)
                                                                .weight_decay(weight_decay)
                                                                .initial_accumulator_value(c.initial_accumulator_value)
                                                                .eps(c.eps));
    case OptimizerType::kLion:
      return std::make_unique<LionOptions>(LionOptions(lr).betas(betas).weight_decay(weight_decay));
    case OptimizerType::kLamb:
      return std::make_unique<LambOptions>(LambOptions(lr)
                                               .betas(betas)
                                               .eps(c.eps)
                                               .weight_decay(weight_decay)
                                               .max_coeff(c.max_coeff)
                                               .min_coeff(c.min_coeff)
                                               .bias_correction(c.bias_correction));
  }
  return nullptr;
}

// A torch::optim optimizer of `type` over `groups`, each with its own options.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(OptimizerType type,
                                                        std::vector<torch::optim::OptimizerParamGroup> groups) {
  switch (type) {
    case OptimizerType::kAdam: return std::make_unique<torch::optim::Adam>(std::move(groups));
    case OptimizerType::kAdamW: return std::make_unique<torch::optim::AdamW>(std::move(groups));
    case OptimizerType::kSGD:
      // SGDOptions has no default lr: the defaults only fill groups without options.
      return std::make_unique<torch::optim::SGD>(std::move(groups), torch::optim::SGDOptions(0.0));
    case OptimizerType::kAdagrad: return std::make_unique<torch::optim::Adagrad>(std::move(groups));
    case OptimizerType::kLion: return std::make_unique<Lion>(std::move(groups));
    case OptimizerType::kLamb: return std::make_unique<Lamb>(std::move(groups));
  }
  return nullptr;
}

// Note [parameter groups]: the trainable store parameters of each group, in store order
// (a consolidated optimizer lists them so, and a loaded one must).
std::vector<std::vector<std::size_t>> trainable_by_group(const ChunkStore& store, const StepKernel& kernel) {
  std::vector<std::vector<std::size_t>> out(kernel.n_groups());
  for (std::size_t i = 0; i < store.params().size(); ++i)
    if (store.params()[i].requires_grad()) out[kernel.group_of(i)].push_back(i);
  return out;
}

// torch::optim's per-parameter state as (step, tensors in StepKernel::state_names order).
std::unique_ptr<torch::optim::OptimizerParamState> make_param_state(OptimizerType type, std::int64_t step,
                                                                    const std::vector<at::Tensor>& t) {
  switch (type) {
    case OptimizerType::kAdam: {
      auto s = std::make_unique<torch::optim::AdamParamState>();
      s->step(step).exp_avg(t[0]).exp_avg_sq(t[1]);
      if (t.size() > 2) s->max_exp_avg_sq(t[2]);
      return s;
    }
    case OptimizerType::kAdamW: {
      auto s = std::make_unique<torch::optim::AdamWParamState>();
      s->step(step).exp_avg(t[0]).exp_avg_sq(t[1]);
      if (t.size() > 2) s->max_exp_avg_sq(t[2]);
      return s;
    }
    case OptimizerType::kSGD: {
      auto s = std::make_unique<torch::optim::SGDParamState>();
      s->momentum_buffer(t[0]);
      return s;
    }
    case OptimizerType::kAdagrad: {
      auto s = std::make_unique<torch::optim::AdagradParamState>();
      s->step(step).sum(t[0]);
      return s;
    }
    case OptimizerType::kLion: {
      auto s = std::make_unique<LionParamState>();
      s->step(step).exp_avg(t[0]);
      return s;
    }
    case OptimizerType::kLamb: {
      auto s = std::make_unique<LambParamState>();
      s->step(step).exp_avg(t[0]).exp_avg_sq(t[1]);
      return s;
    }
  }
  return nullptr;
}

// Reads (step, tensors) back; false if the state is not of the expected type.
bool read_param_state(OptimizerType type, torch::optim::OptimizerParamState& ps, std::int64_t* step,
                      std::vector<at::Tensor>* t, bool amsgrad) {
  auto adam_like = [&](auto* s) {
    if (s == nullptr) return false;
    *step = s->step();
    *t = {s->exp_avg(), s->exp_avg_sq()};
    if (amsgrad) t->push_back(s->max_exp_avg_sq());
    return true;
  };
  switch (type) {
    case OptimizerType::kAdam: return adam_like(dynamic_cast<torch::optim::AdamParamState*>(&ps));
    case OptimizerType::kAdamW: return adam_like(dynamic_cast<torch::optim::AdamWParamState*>(&ps));
    case OptimizerType::kSGD: {
      auto* s = dynamic_cast<torch::optim::SGDParamState*>(&ps);
      if (s == nullptr) return false;
      // torch's SGD counts no steps: a momentum buffer means it has stepped, and the next
      // step must not start the buffer afresh (the kernel's step 1 does).
      *step = s->momentum_buffer().defined() ? 1 : 0;
      *t = {s->momentum_buffer()};
      return true;
    }
    case OptimizerType::kAdagrad: {
      auto* s = dynamic_cast<torch::optim::AdagradParamState*>(&ps);
      if (s == nullptr) return false;
      *step = s->step();
      *t = {s->sum()};
      return true;
    }
    case OptimizerType::kLion: {
      auto* s = dynamic_cast<LionParamState*>(&ps);
      if (s == nullptr) return false;
      *step = s->step();
      *t = {s->exp_avg()};
      return true;
    }
    case OptimizerType::kLamb: {
      auto* s = dynamic_cast<LambParamState*>(&ps);
      if (s == nullptr) return false;
      *step = s->step();
      *t = {s->exp_avg(), s->exp_avg_sq()};
      return true;
    }
  }
  return false;
}

// The fp32 values of chunk c's shard on this rank: the master when the chunk trains,
// else (a chunk of frozen parameters, stage 3) its compute-dtype shard.
Result<at::Tensor> shard_values(Engine::Impl& m, std::uint32_t c) {
  const ChunkRt& k = (*m.core.chunks)[c];
  if (k.trainable) {
    STRATA_ASSIGN_OR_RETURN(ShardState s, m.optim->read(c));
    return s.master;
  }
  // Never made from a master (not trainable); on the CPU, wherever the shard is.
  if (k.shard_tier != Tier::kNvme) return k.shard.to(at::kCPU, at::kFloat);
  at::Tensor t = aligned_empty(m.core.chunks->store().shard_elems(c), m.core.opt.compute_dtype);
  STRATA_RETURN_IF_ERROR(m.core.chunks->load_shard(c, t));
  return t.to(at::kFloat);
}

// Chunk c's parameter shard becomes `values` (fp32, shard size) cast to the compute
// dtype, in its tier; a replicated chunk is all-gathered in end_write_shards().
Status set_param_shard(Engine::Impl& m, std::uint32_t c, const at::Tensor& values) {
  ChunkRuntime& chunks = *m.core.chunks;
  ChunkRt& k = chunks[c];
  const bool nvme = k.shard_tier == Tier::kNvme;
  m.gatherer->wait_copies();  // a gather may still be copying the shard in (Note [copy stream])
  at::Tensor shard = nvme ? aligned_empty(chunks.store().shard_elems(c), m.core.opt.compute_dtype) : k.shard;
  shard.copy_(values);
  if (nvme) STRATA_RETURN_IF_ERROR(chunks.store_shard(c, shard));
  if (k.residency == Residency::kReplicated && m.core.chunk_world() > 1) m.gatherer->refresh(c);
  return ok();
}

// Every rank's shard of `shard` (fp32, chunk c's shard size) in one full-chunk tensor.
Result<at::Tensor> gather_chunk(Engine::Impl& m, std::uint32_t c, const at::Tensor& shard) {
  at::Tensor full = at::empty({m.core.chunks->store().chunk_elems(c)}, at::kFloat);
  if (m.core.chunk_world() > 1) STRATA_RETURN_IF_ERROR(m.core.comm.all_gather(shard.contiguous(), full).wait());
  else full.copy_(shard);
  return full;
}

// Parameter p's values in a full-chunk tensor laid out like its chunk.
at::Tensor param_piece(const ChunkStore& store, const at::Tensor& full, const plan::ParamSlot& slot) {
  return full.narrow(0, static_cast<std::int64_t>(slot.offset_elems), static_cast<std::int64_t>(slot.numel))
      .view(store.params()[slot.param].sizes())
      .clone();
}

}  // namespace

Result<std::vector<at::Tensor>> Engine::consolidated_params() {
  Impl& m = *impl_;
  STRATA_RETURN_IF_ERROR(m.adopt_param_edits());  // Note [edited parameters]
  const ChunkStore& store = m.core.chunks->store();
  std::vector<at::Tensor> out(m.all_params.size());
  std::vector<std::size_t> engine_index(store.params().size());
  for (std::size_t i = 0; i < m.all_params.size(); ++i) {
    if (m.store_index[i] >= 0) engine_index[static_cast<std::size_t>(m.store_index[i])] = i;
    else out[i] = m.all_params[i].detach().to(at::kFloat).clone();  // frozen, stages 0-2: as it is
  }
  for (std::uint32_t c = 0; c < m.core.chunks->size(); ++c) {
    STRATA_ASSIGN_OR_RETURN(at::Tensor shard, shard_values(m, c));
    STRATA_ASSIGN_OR_RETURN(at::Tensor full, gather_chunk(m, c, shard));
    for (const plan::ParamSlot& slot : store.chunk(c).params) out[engine_index[slot.param]] = param_piece(store, full, slot);
  }
  return out;
}

// Note [gathered parameters]: DeepSpeed's GatheredParameters context reads or edits some
// parameters outside forward, which at stage 3 hold no values there. gather_params
// all-gathers the chunks that hold them (only those) and hands out each parameter's full
// fp32 value (the trained ones' masters); the Python front end lends them to the
// parameters for the context. release_params takes the values back as an in-place edit
// is taken: into this rank's master shard (only the elements not equal to the master's
// rounding, for a 16-bit value), and the parameter shard cast from it, through the path
// a checkpoint load takes (write_shard, end_write_shards), so every placement works; a
// frozen parameter's shard takes the value itself. No forward or step may run in
// between: the parameters do not view their chunks then.
Result<std::vector<at::Tensor>> Engine::gather_params(std::span<const at::Tensor> params) {
  Impl& m = *impl_;
  STRATA_RETURN_IF_ERROR(m.end_failed_backward());
  if (m.in_backward || m.step_open) {
    return make_error(ErrorCode::kFailedPrecondition, "gather_params() between a training forward and the end of "
                      "its backward: gather parameters before the forward or after the backward");
  }
  STRATA_RETURN_IF_ERROR(m.adopt_param_edits());
  const ChunkStore& store = m.core.chunks->store();
  std::vector<std::int64_t> wanted(params.size());
  std::vector<std::uint8_t> need(m.core.chunks->size(), 0);
  for (std::size_t j = 0; j < params.size(); ++j) {
    STRATA_ASSIGN_OR_RETURN(const std::size_t i, m.param_index(params[j]));
    wanted[j] = m.store_index[i];
    if (wanted[j] >= 0) need[store.layout().where[static_cast<std::size_t>(wanted[j])].chunk] = 1;
  }
  std::vector<at::Tensor> out(params.size());
  for (std::uint32_t c = 0; c < m.core.chunks->size(); ++c) {
    if (!need[c]) continue;
    STRATA_ASSIGN_OR_RETURN(at::Tensor shard, shard_values(m, c));
    STRATA_ASSIGN_OR_RETURN(at::Tensor full, gather_chunk(m, c, shard));
    for (const plan::ParamSlot& slot : store.chunk(c).params)
      for (std::size_t j = 0; j < params.size(); ++j)
        if (wanted[j] == static_cast<std::int64_t>(slot.param)) out[j] = param_piece(store, full, slot);
  }
  for (std::size_t j = 0; j < params.size(); ++j)
    if (wanted[j] < 0) out[j] = params[j].detach().to(at::kFloat).clone();  // frozen, stages 0-2: as it is
  ++m.gathered;
  return out;
}

Status Engine::release_params(std::span<const at::Tensor> params, std::span<const at::Tensor> values) {
  Impl& m = *impl_;
  if (m.gathered == 0) return make_error(ErrorCode::kFailedPrecondition, "release_params() without gather_params()");
  --m.gathered;
  if (values.empty()) {
    m.record_param_versions();  // what changed while lent is dropped
    return ok();
  }
  if (values.size() != params.size()) {
    return make_error(ErrorCode::kInvalidArgument, "release_params: {} values for {} parameters", values.size(),
                      params.size());
  }
  ChunkRuntime& chunks = *m.core.chunks;
  std::vector<std::int64_t> of_param(chunks.store().params().size(), -1);  // store index -> j
  std::vector<std::uint8_t> touched(chunks.size(), 0);
  for (std::size_t j = 0; j < params.size(); ++j) {
    STRATA_ASSIGN_OR_RETURN(const std::size_t i, m.param_index(params[j]));
    if (values[j].numel() != params[j].numel()) {
      return make_error(ErrorCode::kInvalidArgument, "release_params: parameter '{}' has {} elements, its value {}",
                        m.param_names[i], params[j].numel(), values[j].numel());
    }
    const int p = m.store_index[i];
    if (p < 0) {  // frozen, stages 0-2: the caller's tensor
      at::NoGradGuard no_grad;
      if (!values[j].is_same(params[j])) params[j].copy_(values[j].view_as(params[j]));
      continue;
    }
    of_param[static_cast<std::size_t>(p)] = static_cast<std::int64_t>(j);
    touched[chunks.store().layout().where[static_cast<std::size_t>(p)].chunk] = 1;
  }
  m.pending_read.reset();
  for (std::uint32_t c = 0; c < chunks.size(); ++c) {
    if (!touched[c] || chunks.slots(c).empty()) continue;
    ShardTensors t;
    if (chunks[c].trainable) {
      STRATA_ASSIGN_OR_RETURN(ShardState s, m.optim->read(c));
      t.master = std::move(s.master);
      t.states = std::move(s.states);
    } else {
      STRATA_ASSIGN_OR_RETURN(t.values, shard_values(m, c));
    }
    at::Tensor& dst = chunks[c].trainable ? t.master : t.values;
    for (const ChunkStore::ShardSlot& slot : chunks.slots(c)) {
      const std::int64_t j = of_param[slot.param];
      if (j < 0) continue;
      const at::Tensor value = values[static_cast<std::size_t>(j)].reshape({-1}).narrow(0, slot.param_offset, slot.numel);
      take_values(dst.narrow(0, slot.shard_offset, slot.numel), value);
    }
    STRATA_RETURN_IF_ERROR(write_shard(c, t));
  }
  return end_write_shards();
}

Result<std::unique_ptr<torch::optim::Optimizer>> Engine::consolidate_state_dict(int to_rank) {
  Impl& m = *impl_;
  comm::Communicator& comm = m.core.comm;
  if (to_rank < 0 || to_rank >= comm.world()) {
    return make_error(ErrorCode::kInvalidArgument, "consolidate_state_dict: rank {} is not in 0..{}", to_rank,
                      comm.world() - 1);
  }
  if (m.stepper->wrapped()) {
    return make_error(ErrorCode::kUnimplemented,
                      "consolidate_state_dict works with strata's fused optimizers; a wrapped torch::optim "
                      "optimizer keeps per-chunk state that has no per-parameter form");
  }
  STRATA_RETURN_IF_ERROR(m.adopt_param_edits());  // Note [edited parameters]
  const ChunkStore& store = m.core.chunks->store();
  const bool root = comm.rank() == to_rank;
  const std::size_t n_params = store.params().size(), n_states = m.kernel.state_names().size();
  std::vector<at::Tensor> master(n_params);
  std::vector<std::vector<at::Tensor>> states(n_params, std::vector<at::Tensor>(n_states));
  for (std::uint32_t c = 0; c < m.core.chunks->size(); ++c) {
    if (!(*m.core.chunks)[c].trainable) continue;
    STRATA_ASSIGN_OR_RETURN(ShardState s, m.optim->read(c));
    std::vector<at::Tensor> shard_tensors = {s.master};
    for (const auto& t : s.states) shard_tensors.push_back(t);
    for (std::size_t k = 0; k < shard_tensors.size(); ++k) {
      // Every rank gathers (a collective); only the root keeps the pieces.
      STRATA_ASSIGN_OR_RETURN(at::Tensor full, gather_chunk(m, c, shard_tensors[k]));
      if (!root) continue;
      for (const plan::ParamSlot& slot : store.chunk(c).params)
        (k == 0 ? master[slot.param] : states[slot.param][k - 1]) = param_piece(store, full, slot);
    }
  }
  if (!root) return std::unique_ptr<torch::optim::Optimizer>();
  const OptimizerType type = m.kernel.type();
  const ParamSteps& steps = m.stepper->param_steps();
  const OptimizerConfig& oc = m.core.opt.optimizer;
  std::vector<std::size_t> trainable;
  std::vector<torch::optim::OptimizerParamGroup> groups;
  const auto by_group = trainable_by_group(store, m.kernel);
  const std::vector<double> lrs = group_lrs(), decays = group_weight_decays();
  for (std::size_t g = 0; g < by_group.size(); ++g) {
    std::vector<at::Tensor> params;
    for (std::size_t i : by_group[g]) params.push_back(master[i]);
    trainable.insert(trainable.end(), by_group[g].begin(), by_group[g].end());
    groups.emplace_back(std::move(params), make_options(type, oc, lrs[g], decays[g], m.kernel));
  }
  auto opt = make_optimizer(type, std::move(groups));
  for (std::size_t i : trainable) {
    // torch::optim creates Adam and SGD state on a parameter's first gradient, Adagrad's
    // at construction; mirror that. SGD without momentum has no state at all.
    if (!steps.ever_had_grad[i] && type != OptimizerType::kAdagrad) continue;
    if (type == OptimizerType::kSGD && n_states == 0) continue;
    opt->state()[torch_compat::optim_state_key(master[i])] = make_param_state(type, steps.steps[i], states[i]);
  }
  return opt;
}

Status Engine::load_state_dict(torch::optim::Optimizer& full) {
  Impl& m = *impl_;
  ChunkRuntime& chunks = *m.core.chunks;
  const ChunkStore& store = chunks.store();
  const OptimizerType type = m.kernel.type();
  // The state dict lists each group's trainable parameters in params() order, as
  // consolidate_state_dict writes them.
  const auto by_group = trainable_by_group(store, m.kernel);
  if (full.param_groups().size() != by_group.size()) {
    return make_error(ErrorCode::kInvalidArgument, "load_state_dict: {} parameter group(s) in the state dict, the engine "
                      "has {}", full.param_groups().size(), by_group.size());
  }
  std::vector<std::size_t> trainable;
  std::vector<at::Tensor> params;
  std::vector<double> lrs;
  for (std::size_t g = 0; g < by_group.size(); ++g) {
    const auto& listed = full.param_groups()[g].params();
    if (listed.size() != by_group[g].size()) {
      return make_error(ErrorCode::kInvalidArgument, "load_state_dict: {} parameters in group {} of the state dict, {} "
                        "trainable in the engine's", listed.size(), g, by_group[g].size());
    }
    trainable.insert(trainable.end(), by_group[g].begin(), by_group[g].end());
    params.insert(params.end(), listed.begin(), listed.end());
    lrs.push_back(full.param_groups()[g].options().get_lr());
  }
  for (std::size_t j = 0; j < params.size(); ++j) {
    if (params[j].sizes() != store.params()[trainable[j]].sizes()) {
      return make_error(ErrorCode::kInvalidArgument, "load_state_dict: parameter {} has shape {} but the model's is {}",
                        j, c10::str(params[j].sizes()), c10::str(store.params()[trainable[j]].sizes()));
    }
  }
  // Every parameter's state first (handles, not copies), so that a mismatch changes nothing.
  constexpr std::size_t kNone = static_cast<std::size_t>(-1);
  std::vector<std::size_t> listed_at(store.params().size(), kNone);  // engine parameter -> j
  struct Given {  // parameter j's entry in the state dict
    bool has = false;
    std::int64_t step = 0;
    std::vector<at::Tensor> states;
  };
  std::vector<Given> given(params.size());
  for (std::size_t j = 0; j < params.size(); ++j) {
    listed_at[trainable[j]] = j;
    auto it = full.state().find(torch_compat::optim_state_key(params[j]));
    Given& g = given[j];
    g.has = it != full.state().end();
    if (g.has && !read_param_state(type, *it->second, &g.step, &g.states, m.core.opt.optimizer.amsgrad)) {
      return make_error(ErrorCode::kInvalidArgument, "load_state_dict: parameter {} has state of another optimizer "
                        "type than {}", j, to_string(type));
    }
  }
  STRATA_RETURN_IF_ERROR(set_group_lrs(lrs));  // only the lrs: see engine.h
  ParamSteps& steps = m.stepper->param_steps();
  for (std::size_t j = 0; j < params.size(); ++j) {
    steps.steps[trainable[j]] = given[j].step;
    steps.ever_had_grad[trainable[j]] = given[j].has && (type != OptimizerType::kAdagrad || given[j].step > 0) ? 1 : 0;
  }
  // A chunk at a time: its shard read, the listed parameters' slices of master and state
  // set, written home (one chunk's state in memory, not the model's); the model's
  // parameters become the loaded masters cast to the compute dtype (a frozen parameter's
  // master is its value: never stepped). The chunks that hold a listed parameter are
  // taken from the layout, alike on every rank: writing a shard can be a collective
  // (stages 1-2 gather the new values) even where this rank's slice holds none of them.
  std::vector<std::uint8_t> listed_chunk(chunks.size(), 0);
  for (std::size_t i : trainable) listed_chunk[store.layout().where[i].chunk] = 1;
  for (std::uint32_t c = 0; c < chunks.size(); ++c) {
    if (!listed_chunk[c]) continue;
    STRATA_ASSIGN_OR_RETURN(ShardState s, m.optim->read(c));
    for (const auto& slot : chunks.slots(c)) {
      const std::size_t j = listed_at[slot.param];
      if (j == kNone) continue;
      s.master.narrow(0, slot.shard_offset, slot.numel)
          .copy_(params[j].detach().reshape({-1}).narrow(0, slot.param_offset, slot.numel));
      const Given& g = given[j];
      for (std::size_t k = 0; k < s.states.size(); ++k) {
        at::Tensor dst = s.states[k].narrow(0, slot.shard_offset, slot.numel);
        if (g.has && k < g.states.size() && g.states[k].defined()) {
          dst.copy_(g.states[k].reshape({-1}).narrow(0, slot.param_offset, slot.numel));
        } else {
          dst.fill_(m.kernel.initial_value(k));
        }
      }
    }
    STRATA_RETURN_IF_ERROR(write_shard(c, {.master = s.master, .states = s.states}));
  }
  return end_write_shards();
}

// Note [checkpoint access].
int Engine::shard_world() const { return impl_->core.chunk_world(); }
int Engine::shard_rank() const { return impl_->core.chunk_world() == 1 ? 0 : impl_->core.comm.rank(); }
bool Engine::chunk_trains(std::uint32_t c) const { return (*impl_->core.chunks)[c].trainable; }
const std::vector<std::string>& Engine::state_names() const { return impl_->kernel.state_names(); }
std::string Engine::optimizer_name() const { return std::string(to_string(impl_->kernel.type())); }

Result<Engine::ShardTensors> Engine::read_shard(std::uint32_t c) {
  Impl& m = *impl_;
  if (c >= m.core.chunks->size()) return make_error(ErrorCode::kOutOfRange, "read_shard: no chunk {}", c);
  if (c == 0) STRATA_RETURN_IF_ERROR(m.adopt_param_edits());  // a save begins (Note [edited parameters])
  if (!(*m.core.chunks)[c].trainable) {
    STRATA_ASSIGN_OR_RETURN(at::Tensor v, shard_values(m, c));
    return ShardTensors{.values = std::move(v)};
  }
  std::optional<OptimStateHolder::PendingRead> begun;
  if (m.pending_read && m.pending_read->chunk == c) begun.swap(m.pending_read);
  m.pending_read.reset();  // a begun read of another chunk is dropped (its handles wait)
  STRATA_ASSIGN_OR_RETURN(ShardState s, m.optim->end_read(begun ? std::move(*begun) : m.optim->begin_read(c)));
  return ShardTensors{.master = std::move(s.master), .states = std::move(s.states)};
}

void Engine::begin_read_shard(std::uint32_t c) {
  Impl& m = *impl_;
  m.pending_read.reset();
  // A save begins: edits go into the masters before they are read; a failure is
  // read_shard(0)'s to report.
  if (c == 0 && !m.adopt_param_edits()) return;
  if (c < m.core.chunks->size() && (*m.core.chunks)[c].trainable) m.pending_read = m.optim->begin_read(c);
}

Engine::ShardTensors Engine::load_target(std::uint32_t c) {
  Impl& m = *impl_;
  const std::int64_t n = m.core.chunks->store().shard_elems(c);
  if (!(*m.core.chunks)[c].trainable) {
    // Frozen values are a cast copy of the shard: new tensors either way.
    return ShardTensors{.values = at::zeros({n}, at::kFloat)};
  }
  if (m.optim->in_memory(c) && m.kernel.state_dtype() == at::kFloat) {
    ShardState s = m.optim->memory_state(c);
    return ShardTensors{.master = s.master, .states = s.states};
  }
  // Fresh fp32 tensors (what checkpoints hold) that write_shard takes home.
  ShardState s = ShardState::make(n, m.kernel);  // master zero, states initial
  for (at::Tensor& t : s.states) t = t.to(at::kFloat);
  return ShardTensors{.master = std::move(s.master), .states = std::move(s.states)};
}

double Engine::initial_state_value(std::size_t state) const { return impl_->kernel.initial_value(state); }

Status Engine::write_shard(std::uint32_t c, const ShardTensors& s) {
  Impl& m = *impl_;
  ChunkRuntime& chunks = *m.core.chunks;
  if (c >= chunks.size()) return make_error(ErrorCode::kOutOfRange, "write_shard: no chunk {}", c);
  const std::int64_t n = chunks.store().shard_elems(c);
  auto fits = [n](const at::Tensor& t) { return t.defined() && t.numel() == n && t.scalar_type() == at::kFloat; };
  ChunkRt& k = chunks[c];
  if (!k.trainable) {
    if (!fits(s.values)) return make_error(ErrorCode::kInvalidArgument, "write_shard: {} needs {} fp32 values", chunks.name(c), n);
    return set_param_shard(m, c, s.values);
  }
  bool states_fit = s.states.size() == m.kernel.state_names().size();
  for (const at::Tensor& t : s.states) states_fit = states_fit && fits(t);
  if (!fits(s.master) || !states_fit) {
    return make_error(ErrorCode::kInvalidArgument, "write_shard: {} needs an fp32 master and {} states of {} elements",
                      chunks.name(c), m.kernel.state_names().size(), n);
  }
  STRATA_RETURN_IF_ERROR(m.optim->write(c, ShardState{.master = s.master, .states = s.states}));
  if (k.shard_from_master) return ok();  // gathers cast the new master (Note [shard from master])
  return set_param_shard(m, c, s.master);
}

Status Engine::end_write_shards() {
  Impl& m = *impl_;
  STRATA_RETURN_IF_ERROR(m.gatherer->finish_refresh());
  m.record_param_versions();  // a load may write through the parameters
  // Gathered copies of the chunks (persistent ones) are stale now.
  return m.access ? m.access->after_optimizer_step() : ok();
}

const std::vector<std::string>& Engine::param_names() const { return impl_->param_names; }
int Engine::store_index(std::size_t i) const { return impl_->store_index.at(i); }

Engine::ParamStep Engine::param_step(std::size_t store_param) const {
  const ParamSteps& p = impl_->stepper->param_steps();
  return {.steps = p.steps.at(store_param), .had_grad = p.ever_had_grad.at(store_param) != 0};
}

void Engine::set_param_step(std::size_t store_param, ParamStep s) {
  ParamSteps& p = impl_->stepper->param_steps();
  p.steps.at(store_param) = s.steps;
  p.ever_had_grad.at(store_param) = s.had_grad ? 1 : 0;
}

void Engine::restore_loss_scaler(const LossScaler::State& s) { impl_->stepper->scaler().restore(s); }
void Engine::set_steps(std::int64_t n) {
  impl_->step_count = n;
  impl_->apply_schedule();  // a resumed run continues its schedule where it stopped
}
comm::Communicator& Engine::communicator() const { return impl_->core.comm; }

}  // namespace strata::engine
