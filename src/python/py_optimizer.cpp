#include "py_optimizer.h"

#include <torch/csrc/utils/pybind.h>
#include <torch/optim/sgd.h>

#include "strata/engine/engine.h"

namespace strata::python {
namespace py = pybind11;

PyOptimizer::PyOptimizer(std::vector<at::Tensor> shards)
    : torch::optim::Optimizer(shards, std::make_unique<torch::optim::SGDOptions>(0.0)), shards_(std::move(shards)) {}

PyOptimizer::~PyOptimizer() {
  // The engine may be destroyed without the GIL (Engine.close releases it).
  py::gil_scoped_acquire gil;
  py_ = py::object();
  slices_.clear();
}

void PyOptimizer::build(const engine::Engine& eng, const std::vector<int>& group_of, int n_groups,
                        const py::object& make) {
  const engine::ChunkStore& store = eng.store();
  std::vector<int> engine_param(store.params().size(), -1);  // store index -> engine index
  for (std::size_t i = 0; i < eng.params().size(); ++i)
    if (const int s = eng.store_index(i); s >= 0) engine_param[static_cast<std::size_t>(s)] = static_cast<int>(i);
  std::vector<py::list> groups(static_cast<std::size_t>(n_groups));
  std::vector<py::list> infos(static_cast<std::size_t>(n_groups));  // per view: (engine param, offset in it, numel)
  std::size_t k = 0;
  for (std::uint32_t c = 0; c < store.num_chunks() && k < shards_.size(); ++c) {
    if (!eng.chunk_trains(c)) continue;  // the wrap hook's order: trainable chunks only
    for (const auto& slot : store.shard_slots(c, eng.shard_rank())) {
      const int p = engine_param[slot.param];
      if (p < 0 || !store.params()[slot.param].requires_grad()) continue;
      const int g = group_of[static_cast<std::size_t>(p)];
      if (g < 0) continue;
      at::Tensor view = shards_[k].detach().narrow(0, slot.shard_offset, slot.numel).detach().requires_grad_(true);
      slices_.push_back({k, slot.shard_offset, slot.numel, view});
      groups[static_cast<std::size_t>(g)].append(view);
      infos[static_cast<std::size_t>(g)].append(py::make_tuple(p, slot.param_offset, slot.numel));
    }
    ++k;
  }
  py::list gs, is;
  for (int g = 0; g < n_groups; ++g) {
    gs.append(groups[static_cast<std::size_t>(g)]);
    is.append(infos[static_cast<std::size_t>(g)]);
  }
  py_ = make(gs, is);
}

at::Tensor PyOptimizer::step(LossClosure) {
  py::gil_scoped_acquire gil;
  for (Slice& s : slices_) {
    const at::Tensor& grad = shards_[s.shard].grad();
    s.view.mutable_grad() = grad.defined() ? grad.narrow(0, s.offset, s.numel) : at::Tensor();
  }
  try {
    py_.attr("step")();
  } catch (py::error_already_set& e) {
    throw std::runtime_error(e.what());  // the engine reports it as the step's error
  }
  return {};
}

}  // namespace strata::python
