// The step kernels against LibTorch's own optimizers (Lion: strata's ATen one): 100 steps
// on random data.
//   fp32: the master agrees with torch's parameter to <= 1e-6 relative error;
//   bf16/fp16: the compute copy equals torch's RNE cast of our fp32 master, bit for bit.
#include <ATen/ATen.h>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <cstring>
#include <functional>
#include <memory>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "strata/base/thread_pool.h"
#include "strata/engine/lion.h"
#include "strata/kernels/optimizer.h"

namespace strata::kernels {
namespace {

constexpr int kSteps = 100;
constexpr std::int64_t kN = 10'007;  // not a multiple of any vector width: tails too

// Note [parity metric]: strata never fuses a*b+c (so every SIMD target gives the same
// bits), while ATen's vectorized add-with-alpha does (fmadd). The two differ by an ulp
// on some elements each step, and over 100 steps those differences wander like any
// rounding noise. Elements that pass near zero then have no meaningful relative error,
// so the elementwise check is torch.testing.assert_close's form with rtol = atol = 1e-6:
// |a - b| <= 1e-6 * (1 + |b|). The norm-wise relative error ||a - b|| / ||b|| is the
// second check. Step 1 of Adam/AdamW is bit-identical to torch (checked below).
double max_elem_error(const at::Tensor& got, const at::Tensor& want) {
  const auto g = got.to(at::kDouble), w = want.to(at::kDouble);
  return ((g - w).abs() / (w.abs() + 1)).max().item<double>();
}

struct ParityCase {
  std::string name;
  std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<at::Tensor>)> make_torch;
  // One strata step on `shard` (grads already in it) at `step`; states are ours.
  std::function<Status(const StepShard&, std::int64_t step, ThreadPool*)> step;
  DType param_dtype;
  double loss_scale;  // strata sees grads * loss_scale and unscales with grad_scale
};

struct OurStates {
  std::vector<float> m, v, vmax;
  explicit OurStates(std::size_t n, float init = 0) : m(n, init), v(n, init), vmax(n, init) {}
};

// With bit_identical, the master must equal torch's parameter exactly (one Adam step:
// no fused operation of torch's touches a non-zero state yet).
void run_parity(const ParityCase& c, int steps = kSteps, bool bit_identical = false) {
  SCOPED_TRACE(c.name);
  at::manual_seed(1234);
  ThreadPool pool(2);
  at::Tensor master = at::randn({kN});
  at::Tensor p = master.clone().set_requires_grad(true);
  auto opt = c.make_torch({p});
  at::Tensor compute = at::empty({kN}, c.param_dtype == DType::kBF16 ? at::kBFloat16 : at::kHalf);
  for (int step = 1; step <= steps; ++step) {
    const at::Tensor g = at::randn({kN}) * 0.1 + 0.01 * step;
    p.mutable_grad() = g.clone();
    opt->step();
    const at::Tensor scaled = g * c.loss_scale;  // a power of two: exact
    StepShard shard{.n = static_cast<std::size_t>(kN), .master = master.data_ptr<float>(),
                    .grad = scaled.data_ptr<float>(), .param = compute.data_ptr(), .param_dtype = c.param_dtype};
    auto st = c.step(shard, step, step % 2 ? &pool : nullptr);
    ASSERT_TRUE(st) << st.error();
  }
  const at::Tensor want_p = p.detach();
  const double norm_rel = ((master.to(at::kDouble) - want_p.to(at::kDouble)).norm() / want_p.to(at::kDouble).norm())
                              .item<double>();
  const double elem = max_elem_error(master, want_p);
  // Printed so that the margins are visible in the test log, not just pass/fail.
  fmt::print("[parity] {:<40} {} steps: norm-wise rel {:.2e}, elementwise {:.2e}\n", c.name, steps, norm_rel, elem);
  EXPECT_LE(norm_rel, 1e-6) << "||strata - torch|| / ||torch|| after " << steps << " steps";
  EXPECT_LE(elem, 1e-6) << "max |strata - torch| / (1 + |torch|) after " << steps << " steps";
  if (bit_identical) {
    EXPECT_EQ(std::memcmp(master.data_ptr(), want_p.data_ptr(), kN * 4), 0) << "first step not bit-identical";
  }
  const at::Tensor want = master.to(compute.scalar_type());  // torch's own RNE cast
  EXPECT_EQ(std::memcmp(compute.data_ptr(), want.data_ptr(), kN * 2), 0)
      << "compute copy differs from torch's cast of the master";
}

ParityCase adam_case(const char* name, const AdamHyper& h, DType param_dtype, double loss_scale) {
  auto states = std::make_shared<OurStates>(kN);
  return {fmt::format("{} wd={} amsgrad={} {}", name, h.weight_decay, h.amsgrad, dtype_name(param_dtype)),
          [h](std::vector<at::Tensor> ps) -> std::unique_ptr<torch::optim::Optimizer> {
            if (h.decoupled_weight_decay) {
              return std::make_unique<torch::optim::AdamW>(ps, torch::optim::AdamWOptions(h.lr)
                                                                   .betas({h.beta1, h.beta2})
                                                                   .eps(h.eps)
                                                                   .weight_decay(h.weight_decay)
                                                                   .amsgrad(h.amsgrad));
            }
            return std::make_unique<torch::optim::Adam>(ps, torch::optim::AdamOptions(h.lr)
                                                                .betas({h.beta1, h.beta2})
                                                                .eps(h.eps)
                                                                .weight_decay(h.weight_decay)
                                                                .amsgrad(h.amsgrad));
          },
          [states, h, loss_scale](const StepShard& s, std::int64_t step, ThreadPool* pool) {
            return adam_step(s, {states->m.data(), states->v.data(), states->vmax.data()}, h,
                             {.step = step, .grad_scale = 1.0 / loss_scale}, pool);
          },
          param_dtype, loss_scale};
}

TEST(TorchParity, Adam) {
  for (bool amsgrad : {false, true}) {
    for (double wd : {0.0, 0.01}) {
      run_parity(adam_case("adam", AdamHyper{.lr = 1e-3, .weight_decay = wd, .amsgrad = amsgrad}, DType::kBF16, 1024));
    }
  }
  run_parity(adam_case("adam, step 1", AdamHyper{.weight_decay = 0.01}, DType::kBF16, 1), 1, true);
}

TEST(TorchParity, AdamW) {
  for (bool amsgrad : {false, true}) {
    const AdamHyper h{.lr = 2e-3, .beta1 = 0.85, .beta2 = 0.995, .eps = 1e-7, .weight_decay = 0.05,
                      .decoupled_weight_decay = true, .amsgrad = amsgrad};
    run_parity(adam_case("adamw", h, DType::kF16, 1));
  }
  const AdamHyper first{.weight_decay = 0.01, .decoupled_weight_decay = true};
  run_parity(adam_case("adamw, step 1", first, DType::kF16, 1), 1, true);
}

TEST(TorchParity, Sgd) {
  const SgdHyper cases[] = {{.lr = 0.05},
                            {.lr = 0.05, .momentum = 0.9, .dampening = 0.1, .weight_decay = 0.01},
                            {.lr = 0.02, .momentum = 0.9, .weight_decay = 1e-3, .nesterov = true}};
  for (const SgdHyper& h : cases) {
    auto states = std::make_shared<OurStates>(kN);
    run_parity({fmt::format("sgd momentum={} dampening={} wd={} nesterov={}", h.momentum, h.dampening,
                            h.weight_decay, h.nesterov),
                [&](std::vector<at::Tensor> ps) {
                  return std::make_unique<torch::optim::SGD>(ps, torch::optim::SGDOptions(h.lr)
                                                                     .momentum(h.momentum)
                                                                     .dampening(h.dampening)
                                                                     .weight_decay(h.weight_decay)
                                                                     .nesterov(h.nesterov));
                },
                [=](const StepShard& s, std::int64_t step, ThreadPool* pool) {
                  return sgd_step(s, states->m.data(), h, {.step = step, .grad_scale = 1.0 / 64}, pool);
                },
                DType::kBF16, 64.0});
  }
}

TEST(TorchParity, Adagrad) {
  const AdagradHyper h{.lr = 0.05, .lr_decay = 0.01, .weight_decay = 0.01, .eps = 1e-10};
  auto states = std::make_shared<OurStates>(kN, 0.1f);  // initial_accumulator_value
  run_parity({"adagrad", [&](std::vector<at::Tensor> ps) {
                return std::make_unique<torch::optim::Adagrad>(ps, torch::optim::AdagradOptions(0.05)
                                                                       .lr_decay(0.01)
                                                                       .weight_decay(0.01)
                                                                       .initial_accumulator_value(0.1)
                                                                       .eps(1e-10));
              },
              [=](const StepShard& s, std::int64_t step, ThreadPool* pool) {
                return adagrad_step(s, states->m.data(), h, {.step = step}, pool);
              },
              DType::kF16, 1.0});
}

// LibTorch has no Lion: the reference is strata::engine::Lion, the torch::optim
// optimizer a consolidated Lion engine hands over, whose step is ATen tensor ops (the
// Python tests hold both against a Lion written in plain PyTorch).
TEST(TorchParity, Lion) {
  for (double wd : {0.0, 0.1}) {
    const LionHyper h{.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.99, .weight_decay = wd};
    auto states = std::make_shared<OurStates>(kN);
    run_parity({fmt::format("lion wd={}", wd),
                [&](std::vector<at::Tensor> ps) {
                  return std::make_unique<engine::Lion>(
                      ps, engine::LionOptions(h.lr).betas({h.beta1, h.beta2}).weight_decay(h.weight_decay));
                },
                [=](const StepShard& s, std::int64_t step, ThreadPool* pool) {
                  return lion_step(s, states->m.data(), h, {.step = step, .grad_scale = 1.0 / 256}, pool);
                },
                DType::kBF16, 256.0});
  }
}

}  // namespace
}  // namespace strata::kernels
