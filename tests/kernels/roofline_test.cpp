#include "strata/kernels/roofline.h"

#include <gtest/gtest.h>

#include "kernel_test_util.h"
#include "strata/base/thread_pool.h"

namespace strata::kernels {
namespace {

using testing::TestArray;

TEST(Roofline, BytesPerElementFollowThePattern) {
  float dummy = 0;
  StepShard fp32{.n = 1, .master = &dummy, .grad = &dummy};
  EXPECT_EQ(step_bytes_per_elem(StepPattern::kAdam, fp32), 28u);  // read p g m v, write p m v
  StepShard bf16 = fp32;
  bf16.param = &dummy;
  bf16.param_dtype = DType::kBF16;
  EXPECT_EQ(step_bytes_per_elem(StepPattern::kAdam, bf16), 30u);
  bf16.state_dtype = DType::kBF16;
  bf16.grad_dtype = DType::kBF16;
  EXPECT_EQ(step_bytes_per_elem(StepPattern::kAdam, bf16), 4u + 2 + 4 + 4 + 4 + 2);
  EXPECT_EQ(step_bytes_per_elem(StepPattern::kOneState, fp32), 20u);
  EXPECT_EQ(step_bytes_per_elem(StepPattern::kRead, fp32), 4u);
  EXPECT_EQ(step_bytes_per_elem(StepPattern::kCast, bf16), 4u);  // bf16 -> bf16
}

// The roofline loops run on the benchmark's real buffers, so they must leave master and
// states as they were, on every target, including the tails.
TEST(Roofline, LeavesMasterAndStatesUnchanged) {
  std::mt19937 rng(8);
  ThreadPool pool(2);
  for (const std::string& target : testing::all_targets()) {
    testing::ScopedTarget scoped(target);
    for (DType s : {DType::kF32, DType::kBF16}) {
      for (std::size_t n : {0ul, 5ul, 33ul, 100'001ul}) {
        SCOPED_TRACE(::testing::Message() << target << " " << dtype_name(s) << " n=" << n);
        TestArray w(DType::kF32, n, 1), g(DType::kBF16, n, 2), m(s, n, 3), v(s, n, 0), p(DType::kBF16, n, 1);
        w.fill(rng, std::normal_distribution<double>());
        g.fill(rng, std::normal_distribution<double>());
        m.fill(rng, std::normal_distribution<double>());
        v.fill(rng, std::uniform_real_distribution<double>(0.5, 1.0));
        const TestArray w0 = w.clone(), m0 = m.clone(), v0 = v.clone();
        const StepShard shard{.n = n, .master = w.f32(), .grad = g.data(), .grad_dtype = DType::kBF16,
                              .param = p.data(), .param_dtype = DType::kBF16, .state_dtype = s};
        ASSERT_TRUE(roofline_adam(shard, m.data(), v.data(), &pool));
        ASSERT_TRUE(roofline_one_state(shard, m.data(), nullptr));
        EXPECT_TRUE(w.same_bits(w0, "master"));
        EXPECT_TRUE(m.same_bits(m0, "m"));
        EXPECT_TRUE(v.same_bits(v0, "v"));
        for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(p.u16()[i], std::bit_cast<std::uint32_t>(w.f32()[i]) >> 16);
        auto sum = roofline_read(g.data(), DType::kBF16, n, &pool);
        ASSERT_TRUE(sum);
        TestArray c(DType::kF32, n, 0);
        ASSERT_TRUE(roofline_cast(g.data(), DType::kBF16, c.data(), DType::kF32, n, &pool));
        for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(c.f32()[i], g.get(i));
      }
    }
  }
  EXPECT_FALSE(roofline_adam(StepShard{.n = 4}, nullptr, nullptr));
}

}  // namespace
}  // namespace strata::kernels
