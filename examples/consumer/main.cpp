// The consumer project's program: parses a DeepSpeed config with strata::core, then
// trains a small MLP with the engine at ZeRO stage 2 on one rank for 30 steps and exits
// 0 only if the loss fell by half. tests/install runs it against an install.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include "strata/base/config.h"
#include "strata/base/lr_schedule.h"
#include "strata/comm/rendezvous.h"
#include "strata/engine/engine.h"

using namespace strata;

int main() {
  auto cfg = Config::parse(R"({"zero_optimization": {"stage": 2},
                               "optimizer": {"type": "AdamW", "params": {"lr": 0.01}},
                               "scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": 0.01,
                                             "warmup_num_steps": 5, "warmup_type": "linear"}}})");
  if (!cfg) {
    fmt::print(stderr, "{}\n", cfg.error());
    return 1;
  }
  auto comm = comm::init_from_env();  // one rank without RANK/WORLD_SIZE
  if (!comm) {
    fmt::print(stderr, "{}\n", comm.error());
    return 1;
  }
  at::manual_seed(0);
  torch::nn::Sequential model(torch::nn::Linear(8, 32), torch::nn::Tanh(), torch::nn::Linear(32, 1));
  auto opts = engine::EngineOptions::from_config(*cfg, (*comm)->world());
  if (!opts) {
    fmt::print(stderr, "{}\n", opts.error());
    return 1;
  }
  auto eng = engine::Engine::create(model->parameters(), **comm, *opts);
  if (!eng) {
    fmt::print(stderr, "{}\n", eng.error());
    return 1;
  }
  const at::Tensor w = at::linspace(-1, 1, 8).unsqueeze(1);
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    at::Tensor x = at::randn({64, 8});
    at::Tensor loss = (model->forward(x) - at::matmul(x, w)).square().mean();
    if (auto st = (*eng)->backward(loss); !st) {
      fmt::print(stderr, "{}\n", st.error());
      return 1;
    }
    if (auto r = (*eng)->step(); !r) {
      fmt::print(stderr, "{}\n", r.error());
      return 1;
    }
    (step == 0 ? first : last) = loss.item<double>();
  }
  fmt::print("consumer: strata {}, {}; loss {:.4f} -> {:.4f}\n", STRATA_VERSION,
             LrSchedule::create(cfg->scheduler, cfg->optimizer.lr)->describe(), first, last);
  return last < first / 2 ? 0 : 1;
}
