#include "train_engine.h"

#include <unordered_map>

#include <ATen/ATen.h>

#include "rank_threads.h"
#include "strata/comm/communicator.h"

namespace strata::cli {

Result<std::unique_ptr<TrainEngine>> TrainEngine::create(nn::GPT& model, const Config& cfg, comm::Communicator& comm) {
  auto e = std::make_unique<TrainEngine>();
  e->model_ = &model;
  Config c = cfg;
  c.strata.optimizer_threads = c.strata.optimizer_threads ? c.strata.optimizer_threads : threads_per_rank();
  if (c.zero_optimization.stage == 3) {
    STRATA_ASSIGN_OR_RETURN(auto opts, engine::Zero3Options::from_config(c, comm.world()));
    opts.chunks.search_step_elems = static_cast<std::uint64_t>(model->config().hidden);
    STRATA_ASSIGN_OR_RETURN(e->z3_, engine::shard(*model, comm, opts));
    e->elem_bytes_ = c10::elementSize(opts.compute_dtype);
  } else {
    STRATA_ASSIGN_OR_RETURN(auto opts, engine::ShardedOptimizerOptions::from_config(c));
    opts.chunks.search_step_elems = static_cast<std::uint64_t>(model->config().hidden);
    STRATA_ASSIGN_OR_RETURN(e->dp_, engine::ShardedOptimizer::create(model->parameters(), comm, opts));
    e->elem_bytes_ = c10::elementSize(opts.compute_dtype);
  }
  return e;
}

Result<std::vector<std::pair<std::string, at::Tensor>>> TrainEngine::consolidated_params() {
  STRATA_ASSIGN_OR_RETURN(std::vector<at::Tensor> values, z3_ ? z3_->consolidated_params() : dp_->consolidated_params());
  // The engines list parameters in their own order; the model names them.
  std::unordered_map<const void*, std::size_t> index;
  const auto& params = store().params();
  for (std::size_t i = 0; i < params.size(); ++i) index[params[i].unsafeGetTensorImpl()] = i;
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : (*model_)->named_parameters()) {
    auto it = index.find(p.value().unsafeGetTensorImpl());
    out.emplace_back(p.key(), it != index.end() ? values[it->second] : p.value().detach().to(at::kFloat));
  }
  return out;
}

std::array<std::array<std::uint64_t, 4>, 3> TrainEngine::memory_by_kind() const {
  if (z3_) return z3_->memory_by_kind();
  // Stages 0-2 keep full parameters and gradients on compute, the optimizer's shards
  // where the step runs (host memory on this machine).
  std::array<std::array<std::uint64_t, 4>, 3> m{};
  std::uint64_t elems = 0;
  for (std::size_t c = 0; c < dp_->store().num_chunks(); ++c) elems += dp_->store().chunk_elems(c);
  m[0][0] = elems * elem_bytes_;
  m[0][1] = elems * elem_bytes_;
  m[0][2] = dp_->state_bytes();
  return m;
}

void TrainEngine::trace_next_step(const std::string& path) {
  if (z3_) z3_->trace_next_step(path);
  else trace_.arm(path);
}

}  // namespace strata::cli
