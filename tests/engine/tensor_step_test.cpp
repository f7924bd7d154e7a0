// StepKernel::run_tensors (ATen ops, for state on a GPU) against StepKernel::run (the
// fused CPU kernels, themselves tested against torch::optim in tests/kernels): the same
// master, states and compute copy after three steps, for every optimizer and option the
// config offers, fp32 and bf16 gradients and compute copies, fp32 and bf16 states.
#include "engine/shard_state.h"
#include "strata/engine/lamb.h"

#include <cmath>
#include <limits>
#include <vector>

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

namespace strata::engine {
namespace {

struct Case {
  std::string name;
  OptimizerConfig cfg;
};

std::vector<Case> cases() {
  auto make = [](OptimizerType t, auto&& set) {
    OptimizerConfig c;
    c.type = t;
    c.lr = 1e-2;
    set(c);
    return c;
  };
  return {
      {"adam", make(OptimizerType::kAdam, [](OptimizerConfig&) {})},
      {"adam_wd", make(OptimizerType::kAdam, [](OptimizerConfig& c) { c.weight_decay = 0.1; })},
      {"adamw", make(OptimizerType::kAdamW, [](OptimizerConfig& c) { c.weight_decay = 0.1; })},
      {"adamw_amsgrad", make(OptimizerType::kAdamW, [](OptimizerConfig& c) { c.weight_decay = 0.1, c.amsgrad = true; })},
      {"sgd", make(OptimizerType::kSGD, [](OptimizerConfig&) {})},
      {"sgd_momentum", make(OptimizerType::kSGD, [](OptimizerConfig& c) { c.momentum = 0.9, c.dampening = 0.1, c.weight_decay = 0.01; })},
      {"sgd_nesterov", make(OptimizerType::kSGD, [](OptimizerConfig& c) { c.momentum = 0.9, c.nesterov = true; })},
      {"adagrad", make(OptimizerType::kAdagrad, [](OptimizerConfig& c) {
         c.lr_decay = 0.01, c.weight_decay = 0.01, c.initial_accumulator_value = 0.1, c.eps = 1e-10;
       })},
      {"lion", make(OptimizerType::kLion, [](OptimizerConfig& c) { c.betas = {0.9, 0.99}, c.weight_decay = 0.1; })},
  };
}

double rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).abs().max() / b.to(at::kDouble).abs().max().clamp_min(1e-12))
      .item<double>();
}

class TensorStep : public ::testing::TestWithParam<std::tuple<Case, at::ScalarType, at::ScalarType>> {};

TEST_P(TensorStep, MatchesTheFusedCpuKernelsOverThreeSteps) {
  const auto& [c, low, state_dtype] = GetParam();
  auto kernel = StepKernel::create(c.cfg);
  ASSERT_TRUE(kernel.has_value()) << kernel.error().to_string();
  const std::int64_t n = 4099;  // not a multiple of any vector width
  at::manual_seed(7);
  at::Tensor master = at::randn({n});
  std::vector<at::Tensor> states;
  for (std::size_t i = 0; i < kernel->state_names().size(); ++i) {
    states.push_back(at::full({n}, kernel->initial_value(i)).to(state_dtype));
  }
  // The fused kernels' side: fp32 states (what the engine gives them).
  at::Tensor k_master = master.clone(), k_param = at::empty({n}, low);
  std::vector<at::Tensor> k_states;
  for (const auto& s : states) k_states.push_back(s.to(at::kFloat));
  at::Tensor t_master = master.clone(), t_param = at::empty({n}, low);
  std::vector<at::Tensor> t_states;
  for (const auto& s : states) t_states.push_back(s.clone());
  for (std::int64_t step = 1; step <= 3; ++step) {
    const at::Tensor grad = at::randn({n}).to(low);
    const kernels::StepInfo info{.step = step, .grad_scale = 0.5};
    std::vector<void*> ptrs;
    for (auto& s : k_states) ptrs.push_back(s.data_ptr());
    auto gdt = kernel_dtype(low), pdt = kernel_dtype(low);
    ASSERT_TRUE(gdt.has_value() && pdt.has_value());
    ASSERT_TRUE(kernel->run(n, k_master.data_ptr<float>(), ptrs, grad.data_ptr(), *gdt, k_param.data_ptr(), *pdt, info,
                            nullptr));
    if (state_dtype != at::kFloat) {  // what a bf16 state would hold: each store rounded
      for (auto& s : k_states) s.copy_(s.to(state_dtype));
    }
    const at::Tensor grad_before = grad.clone();
    ASSERT_TRUE(kernel->run_tensors(t_master, t_states, grad, t_param, info));
    // The caller's gradient is read, never written (an fp32 one was scaled in place once).
    ASSERT_TRUE(at::equal(grad, grad_before)) << c.name << " step " << step;
  }
  // bf16 states round each store, so the kernels' fp32 states rounded after each step
  // are the reference only up to bf16's precision.
  const double tol = state_dtype == at::kFloat ? 2e-6 : 1e-2;
  EXPECT_LT(rel(t_master, k_master), tol) << c.name;
  for (std::size_t i = 0; i < t_states.size(); ++i) EXPECT_LT(rel(t_states[i], k_states[i]), tol) << c.name << " state " << i;
  // The compute copy is the new master rounded: exactly, on each side.
  EXPECT_TRUE(at::equal(t_param, t_master.to(low))) << c.name;
  EXPECT_TRUE(at::equal(k_param, k_master.to(low))) << c.name;
}

std::string case_name(const ::testing::TestParamInfo<TensorStep::ParamType>& p) {
  return fmt::format("{}_{}_state_{}", std::get<0>(p.param).name, c10::toString(std::get<1>(p.param)),
                     c10::toString(std::get<2>(p.param)));
}

INSTANTIATE_TEST_SUITE_P(All, TensorStep,
                         ::testing::Combine(::testing::ValuesIn(cases()), ::testing::Values(at::kFloat, at::kBFloat16),
                                            ::testing::Values(at::kFloat, at::kBFloat16)),
                         case_name);

// Lamb's passes as tensor ops against the fused kernels, both at the ratio the fused
// sums give (Note [Lamb's two passes]); the sums agree to rounding. And the consolidated
// form, strata::engine::Lamb, steps a whole parameter as the two passes do.
TEST(TensorStep, LambPassesMatchTheFusedCpuKernels) {
  OptimizerConfig cfg;
  cfg.type = OptimizerType::kLamb;
  cfg.lr = 1e-2;
  cfg.weight_decay = 0.01;
  cfg.max_coeff = 3.0;
  auto kernel = StepKernel::create(cfg);
  ASSERT_TRUE(kernel.has_value()) << kernel.error().to_string();
  const std::int64_t n = 4099;
  at::manual_seed(9);
  const at::Tensor master = at::randn({n});
  at::Tensor k_master = master.clone(), k_param = at::empty({n}, at::kBFloat16);
  std::vector<at::Tensor> k_states = {at::zeros({n}), at::zeros({n})};
  at::Tensor t_master = master.clone(), t_param = at::empty({n}, at::kBFloat16);
  std::vector<at::Tensor> t_states = {at::zeros({n}), at::zeros({n})};
  at::Tensor whole = master.clone();  // strata::engine::Lamb's parameter
  engine::Lamb whole_opt({whole}, engine::LambOptions(cfg.lr).weight_decay(cfg.weight_decay).max_coeff(cfg.max_coeff));
  for (std::int64_t step = 1; step <= 3; ++step) {
    const at::Tensor grad = at::randn({n});
    const kernels::StepInfo info{.step = step, .grad_scale = 1.0};
    auto k_sums = kernel->lamb_moments(n, k_master.data_ptr<float>(), {k_states[0].data_ptr(), k_states[1].data_ptr()},
                                       grad.data_ptr(), kernels::DType::kF32, info, nullptr);
    auto t_piece = kernel->lamb_moments_tensors(t_master, t_states, grad, info);
    ASSERT_TRUE(k_sums.has_value() && t_piece.has_value());
    LambNorms norms(1);  // the tensor form's sums come over through LambNorms
    norms.add(0, *t_piece);
    const kernels::LambSums t_sums = norms.settle()[0];
    EXPECT_NEAR(t_sums.p_sq, k_sums->p_sq, 1e-9 * k_sums->p_sq);
    EXPECT_NEAR(t_sums.u_sq, k_sums->u_sq, 1e-5 * k_sums->u_sq);
    const double ratio = kernel->lamb_ratio(*k_sums);
    ASSERT_TRUE(kernel->lamb_apply(n, k_master.data_ptr<float>(), {k_states[0].data_ptr(), k_states[1].data_ptr()},
                                   k_param.data_ptr(), kernels::DType::kBF16, info, ratio, nullptr));
    ASSERT_TRUE(kernel->lamb_apply_tensors(t_master, t_states, t_param, info, ratio));
    whole.mutable_grad() = grad;
    whole_opt.step();
  }
  EXPECT_LT(rel(t_master, k_master), 2e-6);
  EXPECT_LT(rel(whole, k_master), 2e-6);
  for (std::size_t i = 0; i < 2; ++i) EXPECT_LT(rel(t_states[i], k_states[i]), 2e-6) << i;
  EXPECT_TRUE(at::equal(t_param, t_master.to(at::kBFloat16)));
  EXPECT_TRUE(at::equal(k_param, k_master.to(at::kBFloat16)));
  // One pass does not do: run() and run_tensors() say so.
  EXPECT_FALSE(kernel->run(n, k_master.data_ptr<float>(), {k_states[0].data_ptr(), k_states[1].data_ptr()},
                           master.data_ptr(), kernels::DType::kF32, nullptr, kernels::DType::kF32, {}, nullptr));
  EXPECT_FALSE(kernel->run_tensors(t_master, t_states, master, at::Tensor(), {}));
}

// LambNorms adds each parameter's pieces, from the kernels and from tensors, in one copy.
TEST(TensorStep, LambNormsAddEachParametersPieces) {
  LambNorms norms(3);
  norms.add(0, kernels::LambSums{.p_sq = 1.0, .u_sq = 2.0});
  norms.add(2, at::tensor({10.0, 20.0}, at::kDouble));
  norms.add(0, at::tensor({0.5, 0.25}, at::kDouble));
  const std::vector<kernels::LambSums>& sums = norms.settle();
  ASSERT_EQ(sums.size(), 3u);
  EXPECT_EQ(sums[0].p_sq, 1.5);
  EXPECT_EQ(sums[0].u_sq, 2.25);
  EXPECT_EQ(sums[1].p_sq, 0.0);
  EXPECT_EQ(sums[2].u_sq, 20.0);
  EXPECT_EQ(norms.settle()[2].p_sq, 10.0);  // settled once: nothing added twice
}

TEST(TensorStep, RefusesWhatTheKernelsRefuse) {
  OptimizerConfig cfg;
  cfg.type = OptimizerType::kAdamW;
  auto kernel = StepKernel::create(cfg);
  ASSERT_TRUE(kernel.has_value());
  const at::Tensor m = at::zeros({4}), g = at::zeros({4});
  EXPECT_FALSE(kernel->run_tensors(m, {m.clone(), m.clone()}, g, at::Tensor(), {.step = 0}));
  EXPECT_FALSE(kernel->run_tensors(m.to(at::kBFloat16), {m.clone(), m.clone()}, g, at::Tensor(), {.step = 1}));
  EXPECT_FALSE(kernel->run_tensors(m, {m.clone()}, g, at::Tensor(), {.step = 1}));
}

// tensor_grad_stats is the gradient prologue's tensor form: the same partials (sums in
// double on both sides) and the same overflow flag.
TEST(TensorGradStats, MatchTheGradPrologue) {
  at::manual_seed(3);
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const at::Tensor g = (at::randn({10007}) * 30).to(dt);
    auto kdt = kernel_dtype(dt);
    ASSERT_TRUE(kdt.has_value());
    auto want = kernels::grad_prologue(g.data_ptr(), *kdt, static_cast<std::size_t>(g.numel()), 0.25);
    ASSERT_TRUE(want.has_value());
    const kernels::GradStats got = tensor_grad_stats(g, 0.25);
    EXPECT_NEAR(got.l1, want->l1, 1e-12 * want->l1) << c10::toString(dt);
    EXPECT_NEAR(got.l2_sq, want->l2_sq, 1e-12 * want->l2_sq) << c10::toString(dt);
    EXPECT_EQ(got.linf, want->linf) << c10::toString(dt);
    EXPECT_FALSE(got.nonfinite);
    for (double bad : {std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
                       std::numeric_limits<double>::quiet_NaN()}) {
      at::Tensor b = g.clone();
      b[5000] = bad;
      EXPECT_TRUE(tensor_grad_stats(b, 0.25).nonfinite) << c10::toString(dt) << " " << bad;
    }
  }
  const kernels::GradStats empty = tensor_grad_stats(at::empty({0}), 1.0);
  EXPECT_EQ(empty.l1, 0);
  EXPECT_FALSE(empty.nonfinite);
}

// Note [one copy for the gradient norm]: the partials of several shards, merged in one
// go, are the prologues of each merged one by one; an empty shard adds nothing, and a
// shard with an inf or a NaN makes the whole nonfinite (linf NaN when one is NaN).
TEST(TensorGradStats, PartialsOfManyShardsMergeAsTheirProloguesDo) {
  at::manual_seed(5);
  const std::vector<at::Tensor> shards = {(at::randn({4099}) * 7).to(at::kBFloat16), at::empty({0}, at::kBFloat16),
                                          (at::randn({123}) * 1e3).to(at::kBFloat16), at::randn({70001}).to(at::kBFloat16)};
  for (const double bad : {0.0, std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()}) {
    std::vector<at::Tensor> gs, rows;
    for (const auto& s : shards) gs.push_back(s.clone());
    if (bad != 0) gs[2][17] = bad;
    kernels::GradStats want;
    for (const auto& g : gs) {
      auto one = kernels::grad_prologue(g.data_ptr(), kernels::DType::kBF16, static_cast<std::size_t>(g.numel()), 0.5);
      ASSERT_TRUE(one.has_value());
      want.merge(*one);
      rows.push_back(tensor_grad_partials(g));
    }
    const kernels::GradStats got = merge_grad_partials(at::stack(rows), 0.5);
    EXPECT_EQ(got.nonfinite, want.nonfinite) << bad;
    if (bad != 0) {
      EXPECT_TRUE(got.nonfinite);
      EXPECT_EQ(std::isnan(got.linf), std::isnan(bad)) << got.linf;
      continue;
    }
    EXPECT_NEAR(got.l1, want.l1, 1e-12 * want.l1);
    EXPECT_NEAR(got.l2_sq, want.l2_sq, 1e-12 * want.l2_sq);
    EXPECT_EQ(got.linf, want.linf);
  }
}

}  // namespace
}  // namespace strata::engine
