// A model with every awkward case a sharded engine must get right, as units a ZeRO-3
// engine gathers (each called through strata::engine::forward()):
//   - `frozen` has a frozen weight (requires_grad = false) next to a trainable bias;
//   - `head.unused` is trainable but never used, so it never gets a gradient;
//   - `mid` is called twice per forward;
//   - the second call of `mid` sits on a skip connection (h + mid(mid(h)));
//   - `split` returns a tuple, both halves used.
// With chunk_size_elems = 2048 the frozen weight, the trainable bias, the head and the
// unused parameter share one chunk, so a step that writes elements it did not compute
// shows up as a wrong frozen weight.
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include "strata/engine/module_hooks.h"

namespace strata::testing {

struct AwkwardHeadImpl : torch::nn::Module {
  torch::nn::Linear lin{nullptr};
  at::Tensor unused;
  AwkwardHeadImpl() {
    lin = register_module("lin", torch::nn::Linear(32, 4));
    unused = register_parameter("unused", at::zeros({8}));
  }
  at::Tensor forward(const at::Tensor& x) { return lin->forward(x); }
};
TORCH_MODULE(AwkwardHead);

struct AwkwardSplitImpl : torch::nn::Module {
  torch::nn::Linear lin{nullptr};
  AwkwardSplitImpl() { lin = register_module("lin", torch::nn::Linear(32, 32)); }
  std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x) {
    at::Tensor y = lin->forward(x);
    return {y.narrow(1, 0, 16), y.narrow(1, 16, 16)};
  }
};
TORCH_MODULE(AwkwardSplit);

struct AwkwardModel : torch::nn::Module {
  torch::nn::Linear in{nullptr}, mid{nullptr}, frozen{nullptr};
  AwkwardSplit split{nullptr};
  AwkwardHead head{nullptr};

  explicit AwkwardModel(std::uint64_t seed) {
    in = register_module("in", torch::nn::Linear(16, 32));
    mid = register_module("mid", torch::nn::Linear(32, 32));
    split = register_module("split", AwkwardSplit());
    frozen = register_module("frozen", torch::nn::Linear(32, 32));
    head = register_module("head", AwkwardHead());
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
    at::NoGradGuard no_grad;
    for (auto& p : parameters()) p.copy_(at::randn(p.sizes(), g, at::kDouble).to(at::kFloat) * 0.3);
    frozen->weight.set_requires_grad(false);
  }

  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = at::tanh(engine::forward(in, x));
    at::Tensor m = at::tanh(engine::forward(mid, h));
    h = h + at::tanh(engine::forward(mid, m));  // mid again, on the skip branch
    auto [p, q] = engine::forward(split, h);
    h = at::cat({at::tanh(p), at::sigmoid(q)}, 1);
    h = at::tanh(engine::forward(frozen, h));
    return engine::forward(head, h);
  }
  at::Tensor loss(const at::Tensor& x, const at::Tensor& y) { return at::mse_loss(forward(x), y); }
};

// The samples of one step for the whole job: `rows` rows, the same on every rank.
inline std::pair<at::Tensor, at::Tensor> awkward_batch(std::int64_t step, std::int64_t rows) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(3000 + step);
  return {at::randn({rows, 16}, g, at::kDouble).to(at::kFloat), at::randn({rows, 4}, g, at::kDouble).to(at::kFloat)};
}

}  // namespace strata::testing
