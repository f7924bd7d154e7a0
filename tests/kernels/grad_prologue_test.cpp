#include "strata/kernels/grad_prologue.h"

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "kernel_test_util.h"
#include "kernels/reference.h"
#include "strata/base/thread_pool.h"

namespace strata::kernels {
namespace {

using testing::TestArray;

using testing::kAllDTypes;

// |a - b| <= rel * |b|: the SIMD sums add in another order than the reference.
void expect_close(double a, double b, double rel, const char* what) {
  EXPECT_LE(std::abs(a - b), rel * std::abs(b)) << what << ": " << a << " vs reference " << b;
}

void expect_matches_reference(const TestArray& g, double s, ThreadPool* pool = nullptr) {
  auto got = grad_prologue(g.data(), g.dtype(), g.size(), s, pool);
  ASSERT_TRUE(got) << got.error();
  const GradStats want = detail::grad_prologue_reference(g.data(), g.dtype(), g.size(), s);
  EXPECT_FALSE(got->nonfinite);
  expect_close(got->l1, want.l1, 1e-12, "l1");
  expect_close(got->l2_sq, want.l2_sq, 1e-12, "l2_sq");
  EXPECT_EQ(got->linf, want.linf);  // exact: max commutes with scaling
}

TEST(GradPrologue, EveryTargetMatchesADoubleSum) {
  std::mt19937 rng(3);
  std::normal_distribution<double> normal(0.0, 1000.0);  // grads times a loss scale
  for (const std::string& target : testing::all_targets()) {
    testing::ScopedTarget scoped(target);
    for (DType t : kAllDTypes) {
      for (std::size_t n : testing::tail_sizes()) {
        for (std::size_t off : {0u, 1u, 3u}) {
          SCOPED_TRACE(::testing::Message() << target << " " << dtype_name(t) << " n=" << n << " off=" << off);
          TestArray g(t, n, off);
          g.fill(rng, normal);
          expect_matches_reference(g, 1.0 / 1024, nullptr);
        }
      }
    }
  }
}

TEST(GradPrologue, LongRangesAndThreadsStayAccurateAndDeterministic) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> wide(-1.0, 1.0);
  ThreadPool pool(3);
  for (DType t : kAllDTypes) {
    SCOPED_TRACE(dtype_name(t));
    TestArray g(t, 1'000'003, 1);
    g.fill(rng, wide);
    expect_matches_reference(g, 0.5, &pool);
    auto a = grad_prologue(g.data(), t, g.size(), 0.5, &pool);
    auto b = grad_prologue(g.data(), t, g.size(), 0.5, &pool);
    ASSERT_TRUE(a && b);
    EXPECT_EQ(a->l1, b->l1);  // partials combine in block order, not completion order
    EXPECT_EQ(a->l2_sq, b->l2_sq);
  }
}

TEST(GradPrologue, FindsInfAndNanAnywhereOnEveryTarget) {
  std::mt19937 rng(9);
  std::normal_distribution<double> normal(0.0, 1.0);
  const float specials[] = {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN()};
  ThreadPool pool(2);
  for (const std::string& target : testing::all_targets()) {
    testing::ScopedTarget scoped(target);
    for (DType t : kAllDTypes) {
      // 1000 elements: a whole number of no target's vectors, so the last ones are a tail.
      for (std::size_t n : {1ul, 7ul, 1000ul, 70'001ul}) {
        TestArray g(t, n, 1);
        g.fill(rng, normal);
        const std::size_t tail = n > 3 ? n - 3 : 0;
        for (std::size_t pos : {std::size_t{0}, n / 2, tail, n - 1}) {
          const float saved = g.get(pos);
          for (float bad : specials) {
            SCOPED_TRACE(::testing::Message() << target << " " << dtype_name(t) << " n=" << n << " pos=" << pos
                                              << " value=" << bad);
            g.set(pos, bad);
            auto got = grad_prologue(g.data(), t, n, 1.0 / 65536, n > 50'000 ? &pool : nullptr);
            ASSERT_TRUE(got);
            EXPECT_TRUE(got->nonfinite);
            EXPECT_TRUE(detail::grad_prologue_reference(g.data(), t, n, 1.0 / 65536).nonfinite);
            EXPECT_TRUE(std::isnan(got->l1) && std::isnan(got->l2_sq) && std::isnan(got->linf));
          }
          g.set(pos, saved);
          auto clean = grad_prologue(g.data(), t, n, 1.0 / 65536, nullptr);
          ASSERT_TRUE(clean);
          EXPECT_FALSE(clean->nonfinite);
        }
      }
    }
  }
}

TEST(GradPrologue, Fp16MaxValuesDoNotOverflowTheSums) {
  TestArray g(DType::kF16, 4096, 0);
  for (std::size_t i = 0; i < g.size(); ++i) g.set(i, i % 2 ? 65504.0f : -65504.0f);
  auto got = grad_prologue(g.data(), DType::kF16, g.size(), 1.0, nullptr);
  ASSERT_TRUE(got);
  EXPECT_FALSE(got->nonfinite);
  EXPECT_EQ(got->l1, 65504.0 * 4096);
  EXPECT_EQ(got->l2_sq, 65504.0 * 65504.0 * 4096);
  EXPECT_EQ(got->linf, 65504.0);
}

TEST(GradPrologue, MergeNormAndClipCoefficient) {
  GradStats a{.l1 = 3, .l2_sq = 9, .linf = 2, .nonfinite = false};
  const GradStats b{.l1 = 4, .l2_sq = 16, .linf = 3, .nonfinite = false};
  a.merge(b);
  EXPECT_EQ(a.norm(1), 7);
  EXPECT_EQ(a.norm(2), 5);
  EXPECT_EQ(a.norm(HUGE_VAL), 3);
  EXPECT_FALSE(a.nonfinite);
  a.merge(GradStats{.l1 = 0, .l2_sq = 0, .linf = 0, .nonfinite = true});
  EXPECT_TRUE(a.nonfinite);
  EXPECT_EQ(clip_coefficient(5.0, 10.0), 1.0);  // under the limit: no clipping
  EXPECT_DOUBLE_EQ(clip_coefficient(20.0, 10.0), 10.0 / (20.0 + 1e-6));
  EXPECT_EQ(clip_coefficient(20.0, 0.0), 1.0);  // max_norm 0: clipping off
}

TEST(GradPrologue, RejectsBadArguments) {
  float g[4] = {};
  EXPECT_FALSE(grad_prologue(nullptr, DType::kF32, 4, 1.0));
  EXPECT_FALSE(grad_prologue(g, DType::kF32, 4, 0.0));
  EXPECT_FALSE(grad_prologue(g, DType::kF32, 4, std::numeric_limits<double>::infinity()));
  EXPECT_FALSE(grad_prologue(g, static_cast<DType>(7), 4, 1.0));
  auto empty = grad_prologue(nullptr, DType::kF32, 0, 1.0);
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->l1, 0);
  EXPECT_FALSE(empty->nonfinite);
}

}  // namespace
}  // namespace strata::kernels
