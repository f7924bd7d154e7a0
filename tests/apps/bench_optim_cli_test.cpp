// `strata bench optim` as scripts use it: --json with the ratio keys, --target, errors.
// Tiny sizes: this checks the shape of the output, not performance.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/subprocess.h"

namespace strata {
namespace {

using testing::run_command;
using testing::strata_bin;

nlohmann::json run_json(const std::string& args) {
  auto r = run_command(strata_bin() + " bench optim --elements 64Ki --repeats 1 --json " + args);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  auto doc = nlohmann::json::parse(r.output, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(doc.is_discarded()) << r.output;
  return doc;
}

TEST(BenchOptim, JsonHasTheRatiosScriptsCheck) {
  const auto doc = run_json("--threads 2");
  ASSERT_TRUE(doc.contains("ratios")) << doc.dump(2);
  for (const char* key : {"adamw_fp32_vs_roofline", "adamw_fp32_vs_torch", "adamw_bf16_vs_roofline",
                          "adam_fp32_vs_torch", "sgd_fp32_vs_roofline", "prologue_fp32_vs_roofline",
                          "lion_fp32_vs_roofline", "lion_fp32_vs_torch", "lamb_fp32_vs_adamw",
                          "lamb_fp32_vs_torch"}) {
    ASSERT_TRUE(doc["ratios"].contains(key)) << key;
    EXPECT_GT(doc["ratios"][key].get<double>(), 0.0) << key;
  }
  EXPECT_EQ(doc["config"]["elements"], 65536);
  EXPECT_EQ(doc["config"]["threads"], 2);
  EXPECT_EQ(doc["bench"], "optim");
}

TEST(BenchOptim, TargetIsForcedAndReported) {
  auto env = run_command(strata_bin() + " env");
  if (env.output.find("AVX2") == std::string::npos) GTEST_SKIP() << "no AVX2 here";
  const auto doc = run_json("--target avx2 --skip-torch");
  EXPECT_EQ(doc["config"]["target"], "AVX2");
  EXPECT_FALSE(doc["ratios"].contains("adamw_fp32_vs_torch"));  // --skip-torch
}

TEST(BenchOptim, UnknownTargetFailsWithTheChoices) {
  auto r = run_command(strata_bin() + " bench optim --elements 1Ki --target NEON");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("not available here; choose one of"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace strata
