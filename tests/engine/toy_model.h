// A small model with the awkward cases the sharded optimizer must handle: uneven
// parameter sizes, a frozen parameter, a parameter smaller than the world size, and a
// parameter that never receives a gradient.
#pragma once

#include <cmath>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/module.h>

namespace strata::testing {

struct ToyModel : torch::nn::Module {
  at::Tensor w1, b1, w2, b2, tiny, frozen, unused;

  explicit ToyModel(std::uint64_t seed) {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
    w1 = register_parameter("w1", at::randn({37, 23}, g, at::kDouble).to(at::kFloat) * 0.2);
    b1 = register_parameter("b1", at::randn({37}, g, at::kDouble).to(at::kFloat) * 0.1);
    w2 = register_parameter("w2", at::randn({11, 37}, g, at::kDouble).to(at::kFloat) * 0.2);
    b2 = register_parameter("b2", at::randn({11}, g, at::kDouble).to(at::kFloat) * 0.1);
    tiny = register_parameter("tiny", at::randn({2}, g, at::kDouble).to(at::kFloat));
    frozen = register_parameter("frozen", at::randn({5}, g, at::kDouble).to(at::kFloat), /*requires_grad=*/false);
    unused = register_parameter("unused", at::randn({7}, g, at::kDouble).to(at::kFloat));
  }

  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = at::tanh(at::linear(x, w1, b1) + tiny.sum() * 0.1);
    return at::linear(h, w2, b2) + frozen.sum() * 0.01;
  }

  at::Tensor loss(const at::Tensor& x, const at::Tensor& y) { return at::mse_loss(forward(x), y); }
};

// The samples of one step for the whole job: `rows` rows, the same on every rank.
inline std::pair<at::Tensor, at::Tensor> toy_batch(std::int64_t step, std::int64_t rows) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(1000 + step);
  at::Tensor x = at::randn({rows, 23}, g, at::kDouble).to(at::kFloat);
  at::Tensor y = at::randn({rows, 11}, g, at::kDouble).to(at::kFloat);
  return {x, y};
}

// max |a - b| / max |b|: the relative error of a whole tensor. Max-norms, so that the
// only temporary is a - b (at least fp32): at 64 MiB records, widening both to double
// took 2.4 GB of fresh pages per comparison.
inline double rel_error(const at::Tensor& a, const at::Tensor& b) {
  const auto wide = at::promote_types(at::promote_types(a.scalar_type(), b.scalar_type()), at::kFloat);
  const double scale = at::linalg_vector_norm(b, INFINITY).item<double>();
  const double err = at::linalg_vector_norm(at::sub(a.to(wide), b.to(wide)), INFINITY).item<double>();
  return scale > 0 ? err / scale : err;
}

// ||a - b||_2 / ||b||_2: how far apart two tensors are as a whole. Where a few elements
// may sit a rounding step apart and the rest agree (bf16 optimizer state, Note [bf16
// state flips] in bf16_state_reference.h) it stays small, while a difference in every
// element (bf16 state against fp32 state) does not.
inline double rel_l2_error(const at::Tensor& a, const at::Tensor& b) {
  const auto wide = at::promote_types(at::promote_types(a.scalar_type(), b.scalar_type()), at::kDouble);
  const double scale = at::linalg_vector_norm(b.to(wide), 2).item<double>();
  const double err = at::linalg_vector_norm(at::sub(a.to(wide), b.to(wide)), 2).item<double>();
  return scale > 0 ? err / scale : err;
}

}  // namespace strata::testing
