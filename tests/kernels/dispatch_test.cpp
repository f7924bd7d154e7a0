#include "strata/kernels/dispatch.h"

#include <gtest/gtest.h>

#include "kernel_test_util.h"

namespace strata::kernels {
namespace {

TEST(Dispatch, ForcingATargetSwitchesTheCodeThatRuns) {
  const auto names = testing::all_targets();
  ASSERT_FALSE(names.empty());
  for (const std::string& name : names) {
    ASSERT_TRUE(force_target(name));
    // kernel_target() reads the name through the kernels' own dispatch tables.
    EXPECT_EQ(kernel_target().name, name);
    EXPECT_EQ(active_target().name, name);
  }
  reset_target();
  EXPECT_EQ(kernel_target().name, names.front());  // back to the best
}

TEST(Dispatch, ForcingIsCaseInsensitiveAndRejectsUnknownTargets) {
  const auto names = testing::all_targets();
  std::string lower = names.back();
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  ASSERT_TRUE(force_target(lower));
  EXPECT_EQ(kernel_target().name, names.back());
  auto bad = force_target("NEON_BF16");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("NEON_BF16"), std::string::npos);
  reset_target();
}

}  // namespace
}  // namespace strata::kernels
