// A Python torch.optim optimizer stepping the engine's fp32 master shards
// (strata.ShardedOptimizer, FairScale OSS's "wrap any optimizer").
//
// The engine's wrap hook (EngineOptions::wrap) hands over one master shard per trainable
// chunk. Once the engine exists, build() cuts each shard into one leaf tensor per
// parameter slice this rank owns (views: an update to them is an update to the master)
// and calls the Python `make(groups, slices)` with the views grouped by the caller's
// parameter groups; `make` returns the optimizer. Each step sets every view's .grad to
// its slice of the reduced gradient shard and calls the optimizer's step() under the
// GIL. Elementwise optimizers (Adam, AdamW, SGD, Adagrad, ...) then step exactly as on
// whole parameters; one that looks at a parameter's shape would see a flat slice.
#pragma once

#include <memory>
#include <vector>

#include <pybind11/pybind11.h>
#include <torch/optim/optimizer.h>

namespace strata::engine {
class Engine;
}

namespace strata::python {

class PyOptimizer final : public torch::optim::Optimizer {
 public:
  explicit PyOptimizer(std::vector<at::Tensor> shards);
  ~PyOptimizer() override;
  // `group_of[i]`: the caller's group of engine parameter i (-1: not stepped).
  void build(const engine::Engine& eng, const std::vector<int>& group_of, int n_groups, const pybind11::object& make);
  at::Tensor step(LossClosure closure = nullptr) override;
  const pybind11::object& optimizer() const { return py_; }

 private:
  struct Slice {
    std::size_t shard;     // index into shards_
    std::int64_t offset;   // in the shard
    std::int64_t numel;
    at::Tensor view;       // leaf, sharing the master's storage
  };
  std::vector<at::Tensor> shards_;
  std::vector<Slice> slices_;
  pybind11::object py_;
};

}  // namespace strata::python
