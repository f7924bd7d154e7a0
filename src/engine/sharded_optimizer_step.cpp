// ShardedOptimizer's step over the shards, and the all-gather of updated parameters.
#include <ATen/ATen.h>
#include <torch/optim/optimizer.h>

#include "sharded_optimizer_impl.h"
#include "strata/comm/communicator.h"

namespace strata::engine {

Status ShardedOptimizer::Impl::sync_had_grad(comm::Communicator& comm) {
  // ever_had_grad is identical on every rank, so all ranks skip this together once
  // every parameter has had a gradient.
  if (std::all_of(ever_had_grad.begin(), ever_had_grad.end(), [](std::uint8_t f) { return f != 0; })) return ok();
  const auto& local = reducer->had_grad();
  at::Tensor flags = at::empty({static_cast<std::int64_t>(local.size())}, at::kByte);
  std::copy(local.begin(), local.end(), flags.data_ptr<std::uint8_t>());
  STRATA_RETURN_IF_ERROR(comm.all_reduce(flags, comm::ReduceOp::kMax).wait());
  const std::uint8_t* f = flags.data_ptr<std::uint8_t>();
  for (std::size_t i = 0; i < ever_had_grad.size(); ++i) ever_had_grad[i] |= f[i];
  return ok();
}

Status ShardedOptimizer::Impl::apply(ChunkStore& store, comm::Communicator& comm, double grad_scale) {
  if (wrapped) {
    for (std::size_t c = 0; c < store.num_chunks(); ++c) {
      wrapped_params[c].mutable_grad() = reducer->grad_shard(c).to(at::kFloat).mul_(grad_scale);
    }
    try {
      wrapped->step();
    } catch (const std::exception& e) {
      const std::string what = e.what();
      return make_error(ErrorCode::kInternal, "wrapped optimizer step failed: {}", what.substr(0, what.find('\n')));
    }
  } else {
    for (std::size_t c = 0; c < store.num_chunks(); ++c) {
      const at::Tensor& g = reducer->grad_shard(c);
      at::Tensor param = store.shard(store.full(c), c);
      STRATA_ASSIGN_OR_RETURN(kernels::DType gdt, kernel_dtype(g.scalar_type()));
      STRATA_ASSIGN_OR_RETURN(kernels::DType pdt, kernel_dtype(param.scalar_type()));
      auto* g_bytes = static_cast<const std::byte*>(g.data_ptr());
      auto* p_bytes = static_cast<std::byte*>(param.data_ptr());
      ShardState& s = shards[c];
      // Runs of adjacent parameters at the same step count go through one kernel call;
      // parameters that never had a gradient are skipped, as torch::optim skips them.
      const auto& sl = slots[c];
      for (std::size_t i = 0; i < sl.size();) {
        if (!ever_had_grad[sl[i].param]) {
          ++i;
          continue;
        }
        const std::int64_t step = param_steps[sl[i].param] + 1, begin = sl[i].shard_offset;
        std::int64_t end = begin + sl[i].numel;
        std::size_t j = i + 1;
        while (j < sl.size() && sl[j].shard_offset == end && ever_had_grad[sl[j].param] &&
               param_steps[sl[j].param] + 1 == step) {
          end += sl[j].numel;
          ++j;
        }
        std::vector<void*> states;
        for (auto& t : s.states) states.push_back(t.data_ptr<float>() + begin);
        STRATA_RETURN_IF_ERROR(kernel.run(end - begin, s.master.data_ptr<float>() + begin, std::move(states),
                                          g_bytes + begin * g.element_size(), gdt,
                                          p_bytes + begin * param.element_size(), pdt,
                                          {.step = step, .grad_scale = grad_scale}, pool.get()));
        i = j;
      }
    }
  }
  for (std::size_t i = 0; i < param_steps.size(); ++i) param_steps[i] += ever_had_grad[i];
  // The fused kernels already wrote the compute-dtype shards; the wrapped optimizer
  // only updated the masters, which still need the cast.
  return gather_params(store, comm, /*cast_masters=*/wrapped != nullptr);
}

Status ShardedOptimizer::Impl::gather_params(ChunkStore& store, comm::Communicator& comm, bool cast_masters) {
  std::vector<comm::Handle> hs;
  const bool sharded = store.options().world > 1;  // stage 0: every rank stepped everything
  for (std::size_t c = 0; c < store.num_chunks(); ++c) {
    if (cast_masters) store.shard(store.full(c), c).copy_(shards[c].master);  // RNE cast to the compute dtype
    if (sharded) hs.push_back(comm.all_gather(store.shard(store.full(c), c), store.full(c)));
  }
  Status first = ok();
  for (auto& h : hs)
    if (auto st = h.wait(); !st && first) first = std::move(st);
  return first;
}

}  // namespace strata::engine
