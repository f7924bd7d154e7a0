// ShardedOptimizer's step over the shards, and the all-gather of updated parameters.
#include <ATen/ATen.h>
#include <torch/optim/optimizer.h>

#include "sharded_optimizer_impl.h"
#include "strata/comm/communicator.h"

namespace strata::engine {

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
      STRATA_RETURN_IF_ERROR(step_shard(kernel, shards[c], slots[c], param_steps, g.data_ptr(), gdt, param.data_ptr(),
                                        pdt, grad_scale, pool.get()));
    }
  }
  param_steps.advance();
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
