// Zero3Engine: backward — re-gathering before each unit's backward, gradient buffers
// materialized just in time, and reduce-scatters as chunks' gradients complete.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include "zero3_impl.h"

namespace strata::engine {
namespace {

// Before AccumulateGrad writes into param.grad (a view of the chunk's gradient buffer),
// the buffer must have bytes (Note [gathered storage]).
class GradBufferHook : public torch::autograd::FunctionPreHook {
 public:
  GradBufferHook(Zero3Engine::Impl* impl, std::uint32_t chunk) : impl_(impl), chunk_(chunk) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    impl_->ensure_grad_buffer(chunk_);
    return grads;
  }

 private:
  Zero3Engine::Impl* impl_;
  std::uint32_t chunk_;
};

class GradReadyHook : public torch::autograd::FunctionPostHook {
 public:
  GradReadyHook(Zero3Engine::Impl* impl, std::uint32_t param) : impl_(impl), param_(param) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    impl_->on_grad_ready(param_);
    return outputs;
  }

 private:
  Zero3Engine::Impl* impl_;
  std::uint32_t param_;
};

}  // namespace

void Zero3Engine::Impl::install_grad_hooks() {
  local_had_grad.assign(store->params().size(), 0);
  for (std::uint32_t i = 0; i < store->params().size(); ++i) {
    const at::Tensor& p = store->params()[i];
    if (!p.requires_grad()) continue;
    const std::uint32_t c = store->layout().where[i].chunk;
    ++chunks[c].grads_expected;
    auto acc = torch::autograd::impl::grad_accumulator(p);
    acc->add_pre_hook(std::make_unique<GradBufferHook>(this, c));
    acc->add_post_hook(std::make_unique<GradReadyHook>(this, i));
    accumulators.push_back(std::move(acc));  // the parameter holds it only weakly
  }
}

void Zero3Engine::Impl::ensure_grad_buffer(std::uint32_t c) {
  ChunkRt& k = chunks[c];
  if (k.grad_live) return;
  const at::Tensor& g = store->grad(c);
  k.grad_res = reserve_compute(static_cast<std::uint64_t>(g.numel()) * g.element_size(), "grad buffer " + chunk_name(c),
                               keep_for_gather(c));
  ChunkStore::alloc_storage(g);
  g.zero_();
  k.grad_live = true;
  k.grads_pending = k.grads_expected;
}

// Note [nested backward]: the gradient of a unit's output arrives when its backward
// starts; nothing says when it ends. The next unit to start is either nested in it (an
// inner module: the enclosing unit's backward is still running around it) or not (the
// enclosing unit is done). So accesses stay open while units nested in them run.
void Zero3Engine::Impl::begin_unit_backward(int u) {
  const auto& anc = units[u].ancestors;
  while (!bwd_stack.empty() && std::find(anc.begin(), anc.end(), bwd_stack.back().first) == anc.end()) {
    finish_access(bwd_stack.back().first, plan::Phase::kBackward, bwd_stack.back().second);
    bwd_stack.pop_back();
  }
  bwd_stack.emplace_back(u, on_access(u, plan::Phase::kBackward));
}

void Zero3Engine::Impl::on_grad_ready(std::uint32_t param) {
  local_had_grad[param] = 1;
  const std::uint32_t c = store->layout().where[param].chunk;
  if (--chunks[c].grads_pending == 0) launch_reduce_scatter(c);
}

void Zero3Engine::Impl::launch_reduce_scatter(std::uint32_t c) {
  ChunkRt& k = chunks[c];
  const at::Tensor& g = store->grad(c);
  if (k.sm.state() == ChunkState::kHoldAfterBwd) k.sm.to(ChunkState::kReadyForReduce);
  k.rs_issued = Clock::now();
  if (opt.chunks.world == 1) {
    k.rs_out = g;  // nothing to reduce; the buffer itself is this rank's whole shard
  } else {
    k.rs_out = at::empty({store->shard_elems(c)}, g.options());
    k.rs = comm->reduce_scatter(g, k.rs_out, comm::ReduceOp::kAvg);
    cur.moved.net_reduce_scatter +=
        static_cast<std::uint64_t>(k.rs_out.numel()) * k.rs_out.element_size() * (opt.chunks.world - 1);
  }
  k.rs_in_flight = true;
  rs_order.push_back(c);
}

void Zero3Engine::Impl::finish_reduce_scatter(std::uint32_t c) {
  ChunkRt& k = chunks[c];
  if (!k.rs_in_flight) return;
  if (auto st = k.rs.wait(); !st) throw_error(st.error());
  k.rs_in_flight = false;
  const auto t1 = Clock::now();
  trace_out.add(StepTrace::kReduceScatter, "reduce-scatter " + chunk_name(c), k.rs_issued, t1);
  // Accumulate into the fp32 gradient shard where the step runs: a compute->host copy
  // when the optimizer state is off the compute tier.
  k.grad_shard.add_(k.rs_out);
  account(Tier::kCompute, step_tier(c), static_cast<std::uint64_t>(k.rs_out.numel()) * k.rs_out.element_size());
  k.rs_out = at::Tensor();
  ChunkStore::free_storage(store->grad(c));
  k.grad_res.release();
  k.grad_live = false;
  if (k.sm.state() == ChunkState::kReadyForReduce) k.sm.to(ChunkState::kHoldAfterBwd);
}

void Zero3Engine::Impl::poll_reduce_scatters() {
  // Finish, in issue order, those that completed: frees gradient buffers early.
  while (!rs_order.empty() && chunks[rs_order.front()].rs.done()) {
    finish_reduce_scatter(rs_order.front());
    rs_order.pop_front();
  }
}

Status Zero3Engine::Impl::drain_reduce_scatters() {
  try {
    while (!rs_order.empty()) {
      finish_reduce_scatter(rs_order.front());
      rs_order.pop_front();
    }
  } catch (const std::exception& e) {
    rs_order.clear();
    const std::string what = e.what();
    return make_error(ErrorCode::kUnavailable, "{}", what.substr(0, what.find('\n')));
  }
  return ok();
}

void Zero3Engine::Impl::on_backward_end() {
  while (!bwd_stack.empty()) {
    finish_access(bwd_stack.back().first, plan::Phase::kBackward, bwd_stack.back().second);
    bwd_stack.pop_back();
  }
  // Chunks whose parameters did not all get a gradient in this backward: reduce what
  // they have (the missing ones are zero), in chunk order on every rank.
  for (std::uint32_t c = 0; c < chunks.size(); ++c) {
    if (chunks[c].grad_live && !chunks[c].rs_in_flight) launch_reduce_scatter(c);
  }
  if (auto st = drain_reduce_scatters(); !st) throw_error(st.error());
  // The step changes every parameter: nothing but persistent chunks stays gathered.
  for (std::uint32_t c = 0; c < chunks.size(); ++c) release(c);
}

}  // namespace strata::engine
