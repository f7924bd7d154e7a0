#include "strata/kernels/optimizer.h"

#include <cmath>
#include <tuple>

#include <gtest/gtest.h>

#include "kernel_test_util.h"
#include "kernels/reference.h"
#include "strata/base/thread_pool.h"

namespace strata::kernels {
namespace {

using testing::TestArray;

struct Combo {
  DType grad, state;
  bool has_param;
  DType param;
};

// Every dtype combination the step kernels take: 3 grads x 2 states x (no copy + 3).
std::vector<Combo> all_combos() {
  std::vector<Combo> out;
  for (DType g : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (DType s : {DType::kF32, DType::kBF16}) {
      out.push_back({g, s, false, DType::kF32});
      for (DType p : {DType::kF32, DType::kBF16, DType::kF16}) out.push_back({g, s, true, p});
    }
  }
  return out;
}

std::string describe(const Combo& c) {
  return fmt::format("grad={} state={} param={}", dtype_name(c.grad), dtype_name(c.state),
                     c.has_param ? dtype_name(c.param) : "none");
}

// One shard's arrays, each at its own unaligned offset, with random contents that keep
// the states valid (v, vmax and Adagrad's sum non-negative, vmax >= v).
struct StepData {
  Combo combo;
  TestArray master, grad, s0, s1, s2, param;

  StepData(const Combo& c, std::size_t n, std::size_t off, std::mt19937& rng)
      : combo(c),
        master(DType::kF32, n, off),
        grad(c.grad, n, (off + 1) % 4),
        s0(c.state, n, (off + 2) % 4),
        s1(c.state, n, (off + 3) % 4),
        s2(c.state, n, off),
        param(c.param, n, (off + 1) % 4) {
    master.fill(rng, std::normal_distribution<double>(0.0, 1.0));
    grad.fill(rng, std::normal_distribution<double>(0.0, 8.0));
    s0.fill(rng, std::normal_distribution<double>(0.0, 0.1));
    s1.fill(rng, std::uniform_real_distribution<double>(0.0, 0.01));
    for (std::size_t i = 0; i < n; ++i) s2.set(i, s1.get(i) * 1.5f);
  }
  StepData(const StepData& o)
      : combo(o.combo), master(o.master.clone()), grad(o.grad.clone()), s0(o.s0.clone()), s1(o.s1.clone()),
        s2(o.s2.clone()), param(o.param.clone()) {}

  StepShard shard() {
    return StepShard{.n = master.size(), .master = master.f32(), .grad = grad.data(), .grad_dtype = combo.grad,
                     .param = combo.has_param ? param.data() : nullptr, .param_dtype = combo.param,
                     .state_dtype = combo.state};
  }
  AdamState adam_state() { return {s0.data(), s1.data(), s2.data()}; }

  ::testing::AssertionResult same_as(const StepData& ref) const {
    for (auto r : {master.same_bits(ref.master, "master"), s0.same_bits(ref.s0, "state 0"),
                   s1.same_bits(ref.s1, "state 1"), s2.same_bits(ref.s2, "state 2"),
                   combo.has_param ? param.same_bits(ref.param, "param") : ::testing::AssertionSuccess()}) {
      if (!r) return r;
    }
    return ::testing::AssertionSuccess();
  }
};

constexpr int kSteps = 3;  // covers SGD's first step and the bias corrections moving

// Runs `simd` and `ref` for kSteps steps on copies of the same data, on every target,
// dtype combination, tail size and offset, and requires identical bits.
template <class Simd, class Ref>
void check_against_reference(const char* name, Simd simd, Ref ref) {
  std::mt19937 rng(42);
  for (const std::string& target : testing::all_targets()) {
    testing::ScopedTarget scoped(target);
    for (const Combo& c : all_combos()) {
      for (std::size_t n : testing::tail_sizes()) {
        const std::size_t off = n % 4;
        SCOPED_TRACE(::testing::Message() << name << " " << target << " " << describe(c) << " n=" << n
                                          << " offset=" << off);
        StepData got(c, n, off, rng);
        StepData want(got);
        for (std::int64_t step = 1; step <= kSteps; ++step) {
          const StepInfo info{.step = step, .grad_scale = step == 2 ? 0.25 : 1.0};
          ASSERT_TRUE(simd(got, info));
          ref(want, info);
        }
        ASSERT_TRUE(got.same_as(want));
      }
    }
  }
}

TEST(AdamStep, EveryTargetMatchesTheScalarReference) {
  const AdamHyper adam{.lr = 1e-2, .weight_decay = 0.05, .amsgrad = true};
  check_against_reference("adam(l2, amsgrad)", [&](StepData& d, const StepInfo& info) {
    return adam_step(d.shard(), d.adam_state(), adam, info);
  }, [&](StepData& d, const StepInfo& info) { detail::adam_reference(d.shard(), d.adam_state(), adam, info); });
  const AdamHyper adamw{.lr = 3e-3, .beta1 = 0.8, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.1,
                        .decoupled_weight_decay = true};
  check_against_reference("adamw", [&](StepData& d, const StepInfo& info) {
    return adam_step(d.shard(), d.adam_state(), adamw, info);
  }, [&](StepData& d, const StepInfo& info) { detail::adam_reference(d.shard(), d.adam_state(), adamw, info); });
}

TEST(SgdStep, EveryTargetMatchesTheScalarReference) {
  for (const SgdHyper& h : {SgdHyper{.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .weight_decay = 0.01},
                            SgdHyper{.lr = 0.05, .momentum = 0.9, .nesterov = true},
                            SgdHyper{.lr = 0.2, .weight_decay = 0.001}}) {
    check_against_reference("sgd", [&](StepData& d, const StepInfo& info) {
      return sgd_step(d.shard(), d.s0.data(), h, info);
    }, [&](StepData& d, const StepInfo& info) { detail::sgd_reference(d.shard(), d.s0.data(), h, info); });
  }
}

TEST(AdagradStep, EveryTargetMatchesTheScalarReference) {
  for (const AdagradHyper& h : {AdagradHyper{.lr = 0.1, .lr_decay = 0.01, .weight_decay = 0.01},
                                AdagradHyper{.lr = 0.05}}) {
    check_against_reference("adagrad", [&](StepData& d, const StepInfo& info) {
      return adagrad_step(d.shard(), d.s1.data(), h, info);
    }, [&](StepData& d, const StepInfo& info) { detail::adagrad_reference(d.shard(), d.s1.data(), h, info); });
  }
}

TEST(LionStep, EveryTargetMatchesTheScalarReference) {
  for (const LionHyper& h : {LionHyper{.lr = 1e-3, .beta1 = 0.95, .beta2 = 0.98, .weight_decay = 0.1},
                             LionHyper{.lr = 3e-4}, LionHyper{.lr = 1e-3, .beta1 = 1.0, .beta2 = 1.0}}) {
    check_against_reference("lion", [&](StepData& d, const StepInfo& info) {
      return lion_step(d.shard(), d.s0.data(), h, info);
    }, [&](StepData& d, const StepInfo& info) { detail::lion_reference(d.shard(), d.s0.data(), h, info); });
  }
}

// Lion moves every element by exactly lr (after the decay) in the direction opposite to
// sign(b1*m + (1-b1)*g), zero where that is zero, and leaves m = b2*m + (1-b2)*g: checked
// element by element against the formula in double, and the sign cases by hand.
TEST(LionStep, MovesEachElementByTheLearningRate) {
  const LionHyper h{.lr = 0.01, .beta1 = 0.9, .beta2 = 0.99, .weight_decay = 0.5};
  // c = 0.9*m + 0.1*g: positive, negative, zero (m = -g/9 exactly? no: m = 0, g = 0), NaN.
  std::vector<float> w = {1.0f, 1.0f, 1.0f, 1.0f, -2.0f};
  std::vector<float> g = {0.5f, -0.5f, 0.0f, std::nanf(""), 0.0f};
  std::vector<float> m = {0.0f, 0.0f, 0.0f, 0.0f, -1.0f};
  StepShard s{.n = w.size(), .master = w.data(), .grad = g.data()};
  ASSERT_TRUE(lion_step(s, m.data(), h, {.step = 1}));
  const float decay = static_cast<float>(1 - 0.01 * 0.5);
  EXPECT_EQ(w[0], decay - 0.01f);
  EXPECT_EQ(w[1], decay + 0.01f);
  EXPECT_EQ(w[2], decay);  // sign(0) = 0: only the decay
  EXPECT_EQ(w[3], decay);  // sign(NaN) = 0, as torch.sign
  EXPECT_EQ(w[4], -2.0f * decay + 0.01f);
  EXPECT_FLOAT_EQ(m[0], 0.005f);
  EXPECT_FLOAT_EQ(m[1], -0.005f);
  EXPECT_EQ(m[2], 0.0f);
  EXPECT_FLOAT_EQ(m[4], -0.99f);
}

// A pool splits the shard into blocks; the bits must not depend on it.
TEST(OptimizerSteps, ThreadedStepsEqualSingleThreaded) {
  std::mt19937 rng(1);
  ThreadPool pool(3);
  const std::size_t n = 200'003;
  for (const Combo& c : {Combo{DType::kF32, DType::kF32, true, DType::kBF16},
                         Combo{DType::kBF16, DType::kBF16, true, DType::kF16},
                         Combo{DType::kF16, DType::kF32, false, DType::kF32}}) {
    SCOPED_TRACE(describe(c));
    StepData one(c, n, 1, rng);
    StepData many(one);
    const AdamHyper adam{.weight_decay = 0.01, .decoupled_weight_decay = true, .amsgrad = true};
    const SgdHyper sgd{.lr = 0.01, .momentum = 0.9};
    const AdagradHyper adagrad{};
    const LionHyper lion{.weight_decay = 0.1};
    for (std::int64_t step = 1; step <= 2; ++step) {
      const StepInfo info{.step = step, .grad_scale = 0.5};
      ASSERT_TRUE(adam_step(one.shard(), one.adam_state(), adam, info));
      ASSERT_TRUE(adam_step(many.shard(), many.adam_state(), adam, info, &pool));
      ASSERT_TRUE(sgd_step(one.shard(), one.s0.data(), sgd, info));
      ASSERT_TRUE(sgd_step(many.shard(), many.s0.data(), sgd, info, &pool));
      ASSERT_TRUE(adagrad_step(one.shard(), one.s1.data(), adagrad, info));
      ASSERT_TRUE(adagrad_step(many.shard(), many.s1.data(), adagrad, info, &pool));
      ASSERT_TRUE(lion_step(one.shard(), one.s2.data(), lion, info));
      ASSERT_TRUE(lion_step(many.shard(), many.s2.data(), lion, info, &pool));
    }
    EXPECT_TRUE(many.same_as(one));
  }
}

TEST(OptimizerSteps, ComputeCopyIsTheRoundedMaster) {
  std::mt19937 rng(2);
  for (DType p : {DType::kBF16, DType::kF16}) {
    StepData d(Combo{DType::kF32, DType::kF32, true, p}, 5000, 3, rng);
    ASSERT_TRUE(adam_step(d.shard(), d.adam_state(), AdamHyper{.lr = 0.1}, {.step = 1}));
    for (std::size_t i = 0; i < 5000; ++i) {
      const std::uint16_t want = p == DType::kBF16 ? bf16_from_f32(d.master.f32()[i]) : f16_from_f32(d.master.f32()[i]);
      ASSERT_EQ(d.param.u16()[i], want) << i;
    }
  }
}

TEST(OptimizerSteps, Fp32ParamMayAliasTheMaster) {
  std::mt19937 rng(4);
  StepData d(Combo{DType::kF32, DType::kF32, false, DType::kF32}, 1001, 1, rng);
  StepData want(d);
  StepShard aliased = d.shard();
  aliased.param = aliased.master;
  aliased.param_dtype = DType::kF32;
  ASSERT_TRUE(adam_step(aliased, d.adam_state(), AdamHyper{}, {.step = 1}));
  detail::adam_reference(want.shard(), want.adam_state(), AdamHyper{}, {.step = 1});
  EXPECT_TRUE(d.same_as(want));
}

TEST(OptimizerSteps, RejectBadArgumentsWithContext) {
  std::mt19937 rng(5);
  StepData d(Combo{DType::kF32, DType::kF32, true, DType::kBF16}, 64, 0, rng);
  auto message = [](const Status& st) { return st ? std::string("ok") : st.error().message(); };

  StepShard bad_state = d.shard();
  bad_state.state_dtype = DType::kF16;
  auto st = adam_step(bad_state, d.adam_state(), AdamHyper{}, {});
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(message(st).find("fp32 or bf16, got fp16"), std::string::npos) << message(st);

  EXPECT_NE(message(adam_step(d.shard(), {d.s0.data(), nullptr}, AdamHyper{}, {})).find("exp_avg_sq"),
            std::string::npos);
  EXPECT_NE(message(adam_step(d.shard(), {d.s0.data(), d.s1.data()}, AdamHyper{.amsgrad = true}, {}))
                .find("max_exp_avg_sq"),
            std::string::npos);
  EXPECT_NE(message(adam_step(d.shard(), d.adam_state(), AdamHyper{}, {.step = 0})).find("step"), std::string::npos);
  EXPECT_NE(message(adam_step(d.shard(), d.adam_state(), AdamHyper{.beta2 = 1.0}, {})).find("beta2"),
            std::string::npos);
  EXPECT_NE(message(adam_step(d.shard(), d.adam_state(), AdamHyper{.lr = -1}, {})).find("lr"), std::string::npos);
  EXPECT_FALSE(adam_step(d.shard(), d.adam_state(), AdamHyper{}, {.grad_scale = std::nan("")}));

  StepShard aliased = d.shard();
  aliased.param = aliased.master;  // bf16 copy on top of the fp32 master
  EXPECT_NE(message(adam_step(aliased, d.adam_state(), AdamHyper{}, {})).find("aliases"), std::string::npos);
  StepShard no_grad = d.shard();
  no_grad.grad = nullptr;
  EXPECT_NE(message(sgd_step(no_grad, nullptr, SgdHyper{}, {})).find("grad is null"), std::string::npos);

  EXPECT_NE(message(sgd_step(d.shard(), d.s0.data(), SgdHyper{.momentum = 0.9, .dampening = 0.1, .nesterov = true}, {}))
                .find("nesterov"),
            std::string::npos);
  EXPECT_NE(message(sgd_step(d.shard(), nullptr, SgdHyper{.momentum = 0.9}, {})).find("momentum_buffer"),
            std::string::npos);
  EXPECT_TRUE(sgd_step(d.shard(), nullptr, SgdHyper{}, {}));  // no momentum: no buffer needed
  EXPECT_NE(message(adagrad_step(d.shard(), nullptr, AdagradHyper{}, {})).find("sum"), std::string::npos);
  EXPECT_NE(message(adagrad_step(d.shard(), d.s1.data(), AdagradHyper{.lr_decay = -1}, {})).find("lr_decay"),
            std::string::npos);
  EXPECT_NE(message(lion_step(d.shard(), nullptr, LionHyper{}, {})).find("exp_avg"), std::string::npos);
  EXPECT_NE(message(lion_step(d.shard(), d.s0.data(), LionHyper{.beta2 = 1.5}, {})).find("beta2"), std::string::npos);
  EXPECT_NE(message(lion_step(d.shard(), d.s0.data(), LionHyper{.weight_decay = -1}, {})).find("weight_decay"),
            std::string::npos);
  // An empty shard needs no arrays.
  EXPECT_TRUE(adam_step(StepShard{}, AdamState{}, AdamHyper{}, {}));
}

// ---- Lamb ----------------------------------------------------------------------

// Sums agree to rounding: their order differs between the vector code (blocks, lanes)
// and the reference (element order).
::testing::AssertionResult near_sums(const LambSums& got, const LambSums& want) {
  for (auto [g, w, name] : {std::tuple{got.p_sq, want.p_sq, "p_sq"}, std::tuple{got.u_sq, want.u_sq, "u_sq"}}) {
    if (!(std::abs(g - w) <= 1e-12 * std::abs(w) + 1e-300)) {
      return ::testing::AssertionFailure() << name << " " << g << " vs reference " << w;
    }
  }
  return ::testing::AssertionSuccess();
}

TEST(LambStep, EveryTargetMatchesTheScalarReference) {
  for (const LambHyper& h : {LambHyper{.lr = 1e-2, .weight_decay = 0.01},
                             LambHyper{.lr = 1e-3, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-6, .bias_correction = false}}) {
    // Each step: the first pass, its sums against the reference's, then the second pass
    // at one ratio for both (the ratio itself is lamb_ratio's, tested below).
    LambSums simd_sums;
    check_against_reference("lamb", [&](StepData& d, const StepInfo& info) -> Status {
      STRATA_ASSIGN_OR_RETURN(simd_sums, lamb_moments(d.shard(), d.adam_state(), h, info));
      return lamb_apply(d.shard(), d.adam_state(), h, info, 0.5 + 0.25 * static_cast<double>(info.step));
    }, [&](StepData& d, const StepInfo& info) {
      const LambSums want = detail::lamb_moments_reference(d.shard(), d.adam_state(), h, info);
      ASSERT_TRUE(near_sums(simd_sums, want));
      detail::lamb_apply_reference(d.shard(), d.adam_state(), h, info, 0.5 + 0.25 * static_cast<double>(info.step));
    });
  }
}

// Two elements by hand, in double, from DeepSpeed's FusedLamb formula.
TEST(LambStep, OneStepByHand) {
  const LambHyper h{.lr = 0.1, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.1};
  std::vector<float> w = {3.0f, -4.0f}, g = {0.5f, 2.0f}, m = {0.1f, 0.0f}, v = {0.04f, 0.0f};
  StepShard s{.n = 2, .master = w.data(), .grad = g.data(), .param = nullptr};
  const StepInfo info{.step = 2, .grad_scale = 0.5};
  auto sums = lamb_moments(s, {m.data(), v.data()}, h, info);
  ASSERT_TRUE(sums);
  double want_m[2], want_v[2], u[2], usq = 0;
  for (int i = 0; i < 2; ++i) {
    const double gi = 0.5 * g[i], m0[2] = {0.1, 0.0}, v0[2] = {0.04, 0.0}, wi[2] = {3.0, -4.0};
    want_m[i] = 0.9 * m0[i] + 0.1 * gi;
    want_v[i] = 0.99 * v0[i] + 0.01 * gi * gi;
    u[i] = want_m[i] / (std::sqrt(want_v[i]) + 1e-6) + 0.1 * wi[i];
    usq += u[i] * u[i];
    EXPECT_NEAR(m[i], want_m[i], 1e-7);
    EXPECT_NEAR(v[i], want_v[i], 1e-8);
  }
  EXPECT_NEAR(sums->p_sq, 25.0, 1e-12);
  EXPECT_NEAR(sums->u_sq, usq, 1e-5 * usq);
  const double ratio = lamb_ratio(*sums, h);
  EXPECT_NEAR(ratio, 5.0 / std::sqrt(usq), 1e-6);
  ASSERT_TRUE(lamb_apply(s, {m.data(), v.data()}, h, info, ratio));
  const double step_size = 0.1 * std::sqrt(1 - 0.99 * 0.99) / (1 - 0.9 * 0.9);
  EXPECT_NEAR(w[0], 3.0 - step_size * ratio * u[0], 1e-5);
  EXPECT_NEAR(w[1], -4.0 - step_size * ratio * u[1], 1e-5);
}

TEST(LambStep, RatioIsClampedAndOneWhenANormIsZero) {
  const LambHyper h{.max_coeff = 2.0, .min_coeff = 0.5};
  EXPECT_DOUBLE_EQ(lamb_ratio({.p_sq = 1.0, .u_sq = 1.0}, h), 1.0);
  EXPECT_DOUBLE_EQ(lamb_ratio({.p_sq = 9.0, .u_sq = 4.0}, h), 1.5);
  EXPECT_DOUBLE_EQ(lamb_ratio({.p_sq = 100.0, .u_sq = 1.0}, h), 2.0);
  EXPECT_DOUBLE_EQ(lamb_ratio({.p_sq = 1.0, .u_sq = 100.0}, h), 0.5);
  EXPECT_DOUBLE_EQ(lamb_ratio({.p_sq = 0.0, .u_sq = 4.0}, h), 1.0);  // a zero parameter: not clamped to 0.5
  EXPECT_DOUBLE_EQ(lamb_ratio({.p_sq = 4.0, .u_sq = 0.0}, h), 1.0);
}

// A pool splits the passes into blocks: m, v and the step are the same bits, the sums the
// same to rounding (blocks are added in order, but their edges move).
TEST(LambStep, ThreadedPassesEqualSingleThreaded) {
  std::mt19937 rng(11);
  ThreadPool pool(3);
  for (const Combo& c : {Combo{DType::kF32, DType::kF32, true, DType::kBF16},
                         Combo{DType::kBF16, DType::kBF16, true, DType::kF16}}) {
    SCOPED_TRACE(describe(c));
    StepData one(c, 300'007, 3, rng);
    StepData many(one);
    const LambHyper h{.weight_decay = 0.01};
    for (std::int64_t step = 1; step <= 2; ++step) {
      const StepInfo info{.step = step, .grad_scale = 0.5};
      auto a = lamb_moments(one.shard(), one.adam_state(), h, info);
      auto b = lamb_moments(many.shard(), many.adam_state(), h, info, &pool);
      ASSERT_TRUE(a && b);
      EXPECT_TRUE(near_sums(*b, *a));
      ASSERT_TRUE(lamb_apply(one.shard(), one.adam_state(), h, info, lamb_ratio(*a, h)));
      ASSERT_TRUE(lamb_apply(many.shard(), many.adam_state(), h, info, lamb_ratio(*a, h), &pool));
    }
    EXPECT_TRUE(many.same_as(one));
  }
}

TEST(LambStep, RejectsBadArguments) {
  std::mt19937 rng(12);
  StepData d(Combo{DType::kF32, DType::kF32, true, DType::kBF16}, 64, 0, rng);
  auto message = [](const auto& st) { return st ? std::string("ok") : st.error().message(); };
  EXPECT_NE(message(lamb_moments(d.shard(), d.adam_state(), LambHyper{.eps = 0}, {})).find("eps"), std::string::npos);
  EXPECT_NE(message(lamb_moments(d.shard(), d.adam_state(), LambHyper{.max_coeff = 0.001}, {})).find("max_coeff"),
            std::string::npos);
  EXPECT_NE(message(lamb_moments(d.shard(), {d.s0.data(), nullptr}, LambHyper{}, {})).find("exp_avg_sq"),
            std::string::npos);
  EXPECT_NE(message(lamb_apply(d.shard(), d.adam_state(), LambHyper{}, {}, std::nan(""))).find("ratio"),
            std::string::npos);
  StepShard no_grad = d.shard();
  no_grad.grad = nullptr;
  EXPECT_NE(message(lamb_moments(no_grad, d.adam_state(), LambHyper{}, {})).find("grad is null"), std::string::npos);
  EXPECT_TRUE(lamb_apply(no_grad, d.adam_state(), LambHyper{}, {}, 1.0));  // the second pass reads no gradient
}

}  // namespace
}  // namespace strata::kernels
