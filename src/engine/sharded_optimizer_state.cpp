// ShardedOptimizer's state dict: consolidation into a torch::optim optimizer and back.
#include <ATen/ATen.h>
#include <c10/util/string_utils.h>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include "sharded_optimizer_impl.h"
#include "strata/comm/communicator.h"

namespace strata::engine {
namespace {

std::string state_key(const at::Tensor& p) { return c10::guts::to_string(p.unsafeGetTensorImpl()); }

std::unique_ptr<torch::optim::Optimizer> make_optimizer(OptimizerType type, const OptimizerConfig& c, double lr,
                                                        std::vector<at::Tensor> params) {
  const auto betas = std::make_tuple(c.betas[0], c.betas[1]);
  switch (type) {
    case OptimizerType::kAdam:
      return std::make_unique<torch::optim::Adam>(
          params, torch::optim::AdamOptions(lr).betas(betas).eps(c.eps).weight_decay(c.weight_decay).amsgrad(c.amsgrad));
    case OptimizerType::kAdamW:
      return std::make_unique<torch::optim::AdamW>(
          params,
          torch::optim::AdamWOptions(lr).betas(betas).eps(c.eps).weight_decay(c.weight_decay).amsgrad(c.amsgrad));
    case OptimizerType::kSGD:
      return std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(lr)
                                                             .momentum(c.momentum)
                                                             .dampening(c.dampening)
                                                             .weight_decay(c.weight_decay)
                                                             .nesterov(c.nesterov));
    case OptimizerType::kAdagrad:
      return std::make_unique<torch::optim::Adagrad>(params, torch::optim::AdagradOptions(lr)
                                                                 .lr_decay(c.lr_decay)
                                                                 .weight_decay(c.weight_decay)
                                                                 .initial_accumulator_value(c.initial_accumulator_value)
                                                                 .eps(c.eps));
  }
  return nullptr;
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
  }
  return false;
}

}  // namespace

Result<std::unique_ptr<torch::optim::Optimizer>> ShardedOptimizer::consolidate_state_dict(int to_rank) {
  if (to_rank < 0 || to_rank >= comm_.world()) {
    return make_error(ErrorCode::kInvalidArgument, "consolidate_state_dict: rank {} is not in 0..{}", to_rank,
                      comm_.world() - 1);
  }
  Impl& impl = *impl_;
  if (impl.wrapped) {
    return make_error(ErrorCode::kUnimplemented,
                      "consolidate_state_dict works with strata's fused optimizers; a wrapped torch::optim "
                      "optimizer keeps per-chunk state that has no per-parameter form");
  }
  const ChunkStore& store = *store_;
  const bool root = comm_.rank() == to_rank;
  const std::size_t n_params = store.params().size(), n_states = impl.kernel.state_names().size();
  std::vector<at::Tensor> master(n_params);
  std::vector<std::vector<at::Tensor>> states(n_params, std::vector<at::Tensor>(n_states));
  for (std::size_t c = 0; c < store.num_chunks(); ++c) {
    // Gather master and every state of chunk c; only the root keeps the pieces.
    std::vector<at::Tensor> shard_tensors = {impl.shards[c].master};
    for (const auto& t : impl.shards[c].states) shard_tensors.push_back(t);
    for (std::size_t k = 0; k < shard_tensors.size(); ++k) {
      at::Tensor full = at::empty({store.chunk_elems(c)}, at::kFloat);
      if (store.options().world > 1) STRATA_RETURN_IF_ERROR(comm_.all_gather(shard_tensors[k], full).wait());
      else full.copy_(shard_tensors[k]);
      if (!root) continue;
      for (const plan::ParamSlot& slot : store.chunk(c).params) {
        at::Tensor piece = full.narrow(0, static_cast<std::int64_t>(slot.offset_elems), static_cast<std::int64_t>(slot.numel))
                               .view(store.params()[slot.param].sizes())
                               .clone();
        (k == 0 ? master[slot.param] : states[slot.param][k - 1]) = piece;
      }
    }
  }
  if (!root) return std::unique_ptr<torch::optim::Optimizer>();
  const OptimizerType type = impl.kernel.type();
  auto opt = make_optimizer(type, options_.optimizer, impl.kernel.lr(), master);
  for (std::size_t i = 0; i < n_params; ++i) {
    // torch::optim creates Adam and SGD state on a parameter's first gradient, Adagrad's
    // at construction; mirror that. SGD without momentum has no state at all.
    if (!impl.param_steps.ever_had_grad[i] && type != OptimizerType::kAdagrad) continue;
    if (type == OptimizerType::kSGD && n_states == 0) continue;
    opt->state()[state_key(master[i])] = make_param_state(type, impl.param_steps.steps[i], states[i]);
  }
  return opt;
}

Result<std::vector<at::Tensor>> ShardedOptimizer::consolidated_params() {
  const ChunkStore& store = *store_;
  std::vector<at::Tensor> out(store.params().size());
  for (std::size_t c = 0; c < store.num_chunks(); ++c) {
    at::Tensor full = at::empty({store.chunk_elems(c)}, at::kFloat);
    if (store.options().world > 1) STRATA_RETURN_IF_ERROR(comm_.all_gather(impl_->shards[c].master, full).wait());
    else full.copy_(impl_->shards[c].master);
    for (const plan::ParamSlot& slot : store.chunk(c).params) {
      out[slot.param] = full.narrow(0, static_cast<std::int64_t>(slot.offset_elems), static_cast<std::int64_t>(slot.numel))
                            .view(store.params()[slot.param].sizes())
                            .clone();
    }
  }
  return out;
}

double ShardedOptimizer::lr() const { return impl_->kernel.lr(); }
void ShardedOptimizer::set_lr(double lr) { impl_->kernel.set_lr(lr); }

Status ShardedOptimizer::load_state_dict(torch::optim::Optimizer& full) {
  Impl& impl = *impl_;
  ChunkStore& store = *store_;
  const OptimizerType type = impl.kernel.type();
  if (full.param_groups().size() != 1) {
    return make_error(ErrorCode::kInvalidArgument, "load_state_dict: expected one parameter group, got {}",
                      full.param_groups().size());
  }
  const auto& params = full.param_groups()[0].params();
  if (params.size() != store.params().size()) {
    return make_error(ErrorCode::kInvalidArgument, "load_state_dict: {} parameters in the state dict, {} in the model",
                      params.size(), store.params().size());
  }
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (params[i].sizes() != store.params()[i].sizes()) {
      return make_error(ErrorCode::kInvalidArgument, "load_state_dict: parameter {} has shape {} but the model's is {}",
                        i, c10::str(params[i].sizes()), c10::str(store.params()[i].sizes()));
    }
  }
  impl.kernel.set_lr(full.param_groups()[0].options().get_lr());
  for (std::size_t i = 0; i < params.size(); ++i) {
    std::int64_t step = 0;
    std::vector<at::Tensor> st;
    auto it = full.state().find(state_key(params[i]));
    const bool has = it != full.state().end();
    if (has && !read_param_state(type, *it->second, &step, &st, options_.optimizer.amsgrad)) {
      return make_error(ErrorCode::kInvalidArgument, "load_state_dict: parameter {} has state of another optimizer "
                        "type than {}", i, to_string(type));
    }
    impl.param_steps.steps[i] = step;
    impl.param_steps.ever_had_grad[i] = has && (type != OptimizerType::kAdagrad || step > 0) ? 1 : 0;
    const plan::ParamLocation& loc = store.layout().where[i];
    for (const auto& slot : impl.slots[loc.chunk]) {
      if (slot.param != i) continue;
      ShardState& s = impl.shards[loc.chunk];
      s.master.narrow(0, slot.shard_offset, slot.numel)
          .copy_(params[i].detach().reshape({-1}).narrow(0, slot.param_offset, slot.numel));
      for (std::size_t k = 0; k < s.states.size(); ++k) {
        at::Tensor dst = s.states[k].narrow(0, slot.shard_offset, slot.numel);
        if (has && k < st.size() && st[k].defined()) {
          dst.copy_(st[k].reshape({-1}).narrow(0, slot.param_offset, slot.numel));
        } else {
          dst.fill_(impl.kernel.initial_value(k));
        }
      }
    }
  }
  // The model's parameters become the loaded masters (cast to the compute dtype).
  return impl.gather_params(store, comm_, /*cast_masters=*/true);
}

}  // namespace strata::engine
