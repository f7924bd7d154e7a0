// LrSchedule against values worked out by hand from DeepSpeed's formulas and its
// stepping (Note [scheduler stepping]): optimizer step k runs with the formula at
// iteration k - 1, and step 0 with the value the scheduler sets when it is built.
// tests/python/test_schedulers.py checks whole curves and the training they drive.
#include <cmath>
#include <numbers>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "strata/base/config.h"
#include "strata/base/lr_schedule.h"

namespace strata {
namespace {

LrSchedule make(const SchedulerConfig& c, double lr = 1e-3) {
  auto s = LrSchedule::create(c, lr);
  EXPECT_TRUE(s) << s.error();
  return *s;
}

TEST(LrSchedule, WarmupLRLogRisesThenHolds) {
  SchedulerConfig c{.type = SchedulerType::kWarmupLR, .warmup_min_lr = 0.0, .warmup_max_lr = 1.0, .warmup_num_steps = 10};
  LrSchedule s = make(c);
  EXPECT_EQ(s.lr(0), 0.0);  // built: warmup_min_lr
  EXPECT_EQ(s.lr(1), 0.0);  // iteration 0: ln 1 = 0
  EXPECT_DOUBLE_EQ(s.lr(2), std::log(2.0) / std::log(10.0));
  EXPECT_DOUBLE_EQ(s.lr(10), std::log(10.0) / std::log(10.0));  // iteration 9: the last warmup one
  EXPECT_EQ(s.lr(11), 1.0);
  EXPECT_EQ(s.lr(1000), 1.0);
  EXPECT_FALSE(s.betas(3));
}

TEST(LrSchedule, WarmupDecayLRLinearDecaysToZeroAtTheTotal) {
  SchedulerConfig c{.type = SchedulerType::kWarmupDecayLR, .warmup_min_lr = 0.0, .warmup_max_lr = 2.0,
                    .warmup_num_steps = 4, .warmup_type = "linear", .total_num_steps = 12};
  LrSchedule s = make(c);
  EXPECT_EQ(s.lr(3), 2.0 * 2 / 4);             // iteration 2 of 4
  EXPECT_EQ(s.lr(5), 2.0 * (12 - 4) / (12 - 4));  // iteration 4: decay starts at the peak
  EXPECT_EQ(s.lr(9), 2.0 * (12 - 8) / 8.0);
  EXPECT_EQ(s.lr(13), 0.0);
  EXPECT_EQ(s.lr(20), 0.0);
}

TEST(LrSchedule, WarmupCosineLRScalesTheOptimizerLr) {
  SchedulerConfig c{.type = SchedulerType::kWarmupCosineLR, .warmup_num_steps = 4, .warmup_type = "linear",
                    .total_num_steps = 10, .warmup_min_ratio = 0.2, .cos_min_ratio = 0.1};
  LrSchedule s = make(c, 0.5);
  EXPECT_EQ(s.lr(0), 0.0);                      // DeepSpeed's value before its first step
  EXPECT_DOUBLE_EQ(s.lr(1), 0.5 * 0.2);         // iteration 0: warmup_min_ratio
  EXPECT_DOUBLE_EQ(s.lr(3), 0.5 * (0.2 + 0.5 * 0.8));
  // Iteration 4: cosine at (4 - 4 + 1) / (10 - 4).
  EXPECT_DOUBLE_EQ(s.lr(5), 0.5 * (0.1 + 0.9 * (1 + std::cos(std::numbers::pi / 6)) / 2));
  EXPECT_DOUBLE_EQ(s.lr(10), 0.5 * 0.1);        // iteration 9: the end of the cosine
}

TEST(LrSchedule, OneCycleCyclesLrAndMomentumThenDecays) {
  SchedulerConfig c{.type = SchedulerType::kOneCycle, .cycle_min_lr = 1.0, .cycle_max_lr = 5.0, .decay_lr_rate = 1.0,
                    .cycle_first_step_size = 2, .cycle_second_step_size = 4, .decay_step_size = 3,
                    .cycle_min_mom = 0.8, .cycle_max_mom = 0.9};
  LrSchedule s = make(c);
  // Step k uses iteration k - 1, whose scale factor takes b = k: up over 2, down over 4.
  EXPECT_EQ(s.lr(0), 1.0);
  EXPECT_DOUBLE_EQ(s.lr(1), 3.0);  // x = 1/6, ratio 1/3: half way up
  EXPECT_DOUBLE_EQ(s.lr(2), 5.0);  // the top
  EXPECT_DOUBLE_EQ(s.lr(5), 2.0);  // x = 5/6: (5/6 - 1) / (1/3 - 1) = 1/4 of the height
  EXPECT_DOUBLE_EQ(s.lr(6), 1.0);  // iteration 5 < 6: b = 6, x = 0 again
  EXPECT_DOUBLE_EQ(s.lr(7), 1.0 / (1 + 1.0 / 3));  // iteration 6: decay interval (6 - 6 + 1) / 3
  EXPECT_DOUBLE_EQ(s.lr(10), 1.0 / (1 + 4.0 / 3));
  EXPECT_EQ(s.betas(0).value(), (std::array<double, 2>{0.8, 0.99}));  // as built
  EXPECT_NEAR(s.betas(1).value()[0], 0.85, 1e-15);  // inverse to the lr
  EXPECT_NEAR(s.betas(2).value()[0], 0.8, 1e-15);
  EXPECT_EQ(s.betas(8).value()[0], 0.9);  // decay_mom_rate 0: cycle_max_mom after the cycle
  c.cycle_momentum = false;
  EXPECT_FALSE(make(c).betas(1));
}

TEST(LrSchedule, LRRangeTestGrowsContinuouslyOrInStairs) {
  SchedulerConfig c{.type = SchedulerType::kLRRangeTest, .lr_range_test_min_lr = 0.1, .lr_range_test_step_rate = 2.0,
                    .lr_range_test_step_size = 4};
  EXPECT_DOUBLE_EQ(make(c).lr(0), 0.1);
  EXPECT_DOUBLE_EQ(make(c).lr(2), 0.1 * (1 + 2.0 * 2 / 4));
  c.lr_range_test_staircase = true;
  EXPECT_DOUBLE_EQ(make(c).lr(3), 0.1);
  EXPECT_DOUBLE_EQ(make(c).lr(4), 0.1 * 3);
}

TEST(LrSchedule, NoSchedulerKeepsTheOptimizerLr) {
  LrSchedule s = make(SchedulerConfig{}, 0.25);
  EXPECT_EQ(s.lr(0), 0.25);
  EXPECT_EQ(s.lr(99), 0.25);
}

TEST(LrSchedule, MissingRequiredParametersAreErrors) {
  auto a = LrSchedule::create(SchedulerConfig{.type = SchedulerType::kWarmupCosineLR}, 1e-3);
  ASSERT_FALSE(a);
  EXPECT_NE(a.error().message().find("total_num_steps: required by WarmupCosineLR"), std::string::npos);
  auto b = LrSchedule::create(SchedulerConfig{.type = SchedulerType::kOneCycle, .cycle_max_lr = 1.0}, 1e-3);
  ASSERT_FALSE(b);
  EXPECT_NE(b.error().message().find("cycle_min_lr and cycle_max_lr: required by OneCycle"), std::string::npos);
}

TEST(LrSchedule, ConfigBlockRoundTripsAndDescribes) {
  auto cfg = Config::parse(R"({"scheduler": {"type": "warmupcosinelr", "params": {"total_num_steps": 100,
                              "warmup_num_steps": "auto", "cos_min_ratio": 0.1}}})");
  ASSERT_TRUE(cfg) << cfg.error();
  EXPECT_EQ(cfg->scheduler.type, SchedulerType::kWarmupCosineLR);
  EXPECT_EQ(cfg->scheduler.warmup_num_steps, 1000);  // "auto": DeepSpeed's default
  auto again = Config::from_json(cfg->to_json());
  ASSERT_TRUE(again) << again.error();
  EXPECT_EQ(*again, *cfg);
  EXPECT_EQ(make(cfg->scheduler, 3e-4).describe(),
            "WarmupCosineLR: lr 0.0003, log warmup over 1000 steps, cosine to 3e-05 at step 100");
}

}  // namespace
}  // namespace strata
