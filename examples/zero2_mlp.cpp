// ZeRO-2 with strata's C++ API: a small regression MLP trained across ranks.
//
//   strata launch -n 2 build/release/bin/example_zero2_mlp
//   torchrun --nproc_per_node 2 --redirects 1 --tee 1 --no_python build/release/bin/example_zero2_mlp
//
// Every rank holds the full model in memory but only its shard of the fp32 master
// weights and Adam state; gradients are reduce-scattered into shards during backward,
// and each full-size gradient buffer lives only until it is reduced.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/activation.h>

#include "strata/comm/rendezvous.h"
#include "strata/engine/engine.h"

using namespace strata;

int main() {
  auto comm = comm::init_from_env();  // RANK, WORLD_SIZE, MASTER_ADDR/PORT, ...
  if (!comm) {
    fmt::print(stderr, "{}\n", comm.error());
    return 1;
  }
  at::manual_seed(0);  // same initial weights on every rank
  torch::nn::Sequential model(torch::nn::Linear(16, 64), torch::nn::Tanh(), torch::nn::Linear(64, 1));

  Config cfg;  // or Config::load("ds_config.json")
  cfg.zero_optimization.stage = 2;
  cfg.optimizer.type = OptimizerType::kAdamW;
  cfg.optimizer.lr = 1e-2;
  cfg.gradient_clipping = 1.0;
  auto opts = engine::EngineOptions::from_config(cfg, (*comm)->world());
  if (!opts) {
    fmt::print(stderr, "{}\n", opts.error());
    return 1;
  }
  auto opt = engine::Engine::create(model->parameters(), **comm, *opts);
  if (!opt) {
    fmt::print(stderr, "{}\n", opt.error());
    return 1;
  }

  const int rank = (*comm)->rank();
  at::Tensor w = at::linspace(-1, 1, 16).unsqueeze(1);  // the function to learn: y = x . w
  double first = 0, last = 0;
  for (int step = 0; step < 200; ++step) {
    at::manual_seed(1000 * step + rank);  // each rank draws its own micro-batch
    at::Tensor x = at::randn({32, 16});
    at::Tensor loss = (model->forward(x) - at::matmul(x, w)).square().mean();
    if (auto st = (*opt)->backward(loss); !st) return 1;
    auto r = (*opt)->step();
    if (!r) {
      fmt::print(stderr, "{}\n", r.error());
      return 1;
    }
    (step == 0 ? first : last) = loss.item<double>();
  }
  fmt::print("rank {}: loss {:.4f} -> {:.4f}, optimizer state on this rank {} bytes\n", rank, first, last,
             (*opt)->state_bytes());
  return last < 0.1 * first ? 0 : 1;
}
