#include "strata/engine/loss_scaler.h"

#include <gtest/gtest.h>

namespace strata::engine {
namespace {

// Expected sequences worked out by hand from DeepSpeed's DynamicLossScaler rules.
TEST(LossScaler, DynamicWithHysteresis) {
  LossScaler s(Fp16Config{.enabled = true, .initial_scale_power = 8, .loss_scale_window = 3, .hysteresis = 2});
  const bool overflow[] = {false, false, true, true, true, false, false, false, false, true, false, false};
  const double scale_before[] = {256, 256, 256, 256, 128, 64, 64, 64, 128, 128, 128, 128};
  for (int i = 0; i < 12; ++i) {
    EXPECT_EQ(s.scale(), scale_before[i]) << "step " << i;
    EXPECT_EQ(s.update(overflow[i]), !overflow[i]) << "step " << i;
  }
  EXPECT_EQ(s.skipped_steps(), 4u);
}

TEST(LossScaler, ConsecutiveHysteresisRefillsAfterEveryGoodStep) {
  LossScaler s(Fp16Config{.enabled = true, .initial_scale_power = 4, .loss_scale_window = 100, .hysteresis = 2,
                          .consecutive_hysteresis = true});
  // Overflows separated by a good step never exhaust the hysteresis of 2.
  for (bool o : {true, false, true, false, true, false}) s.update(o);
  EXPECT_EQ(s.scale(), 16);
  s.update(true);
  s.update(true);  // two in a row: halve
  EXPECT_EQ(s.scale(), 8);
}

TEST(LossScaler, GrowsEveryWindowAndRespectsTheMinimum) {
  LossScaler s(Fp16Config{.enabled = true, .initial_scale_power = 1, .loss_scale_window = 2, .hysteresis = 1,
                          .min_loss_scale = 1});
  s.update(true);
  EXPECT_EQ(s.scale(), 1);
  s.update(true);
  EXPECT_EQ(s.scale(), 1);  // not below min_loss_scale
  s.update(false);          // (2 - 1) % 2 != 0
  EXPECT_EQ(s.scale(), 1);
  s.update(false);          // (3 - 1) % 2 == 0: double
  EXPECT_EQ(s.scale(), 2);
}

TEST(LossScaler, StaticAndDisabled) {
  LossScaler fixed(Fp16Config{.enabled = true, .loss_scale = 128});
  EXPECT_FALSE(fixed.update(true));
  EXPECT_EQ(fixed.scale(), 128);
  LossScaler off;
  EXPECT_EQ(off.scale(), 1);
  EXPECT_FALSE(off.update(true));  // a non-finite gradient still skips the step
  EXPECT_TRUE(off.update(false));
}

}  // namespace
}  // namespace strata::engine
