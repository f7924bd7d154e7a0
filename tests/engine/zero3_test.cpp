// ZeRO-3 against plain LibTorch, over real processes.
#include <algorithm>
#include <cstdlib>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "support/multirank.h"
#include "support/rank_checks.h"

namespace strata {
namespace {

using testing::all_output;
using testing::expect_all_ok;
using testing::run_ranks;

std::string zero3_worker() { return std::string(STRATA_TEST_BIN_DIR) + "/zero3_worker"; }
std::string units_worker() { return std::string(STRATA_TEST_BIN_DIR) + "/units_worker"; }

struct Case {
  int world;
  const char* placement;
};

class Zero3Parity : public ::testing::TestWithParam<Case> {};

TEST_P(Zero3Parity, MatchesUnshardedTrainingFor20Steps) {
  const auto& c = GetParam();
  const auto dir = testing::fresh_temp_dir("zero3");
  expect_all_ok(run_ranks(c.world, {zero3_worker(), "parity", c.placement}, std::chrono::seconds(300),
                          {{"STRATA_TEST_NVME", dir.string()}}));
  std::filesystem::remove_all(dir);
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (int w : {1, 2, 3, 4}) out.push_back({w, "compute"});
  for (const char* p : {"host", "optim-host", "quarter", "auto", "nvme", "nvme-split", "persist", "searched"})
    out.push_back({2, p});
  out.push_back({1, "nvme-split"});
  out.push_back({1, "optim-host"});  // aliased chunks (the whole chunk is the shard), stepped on host
  out.push_back({3, "quarter"});
  // The step as ATen ops (what state on a GPU takes), on a CPU: state on compute, and
  // nvme sub-groups with gradients on nvme.
  out.push_back({2, "nvme-optim-split"});
  out.push_back({2, "compute-tensor-ops"});
  out.push_back({2, "nvme-split-tensor-ops"});
  // Gradient shards kept in compute memory until the step (Note [gradients kept on
  // compute]): state on host, and split between host and nvme.
  out.push_back({2, "host-grads-on-compute"});
  out.push_back({2, "nvme-optim-split-grads-on-compute"});
  return out;
}

INSTANTIATE_TEST_SUITE_P(All, Zero3Parity, ::testing::ValuesIn(cases()), [](const auto& param_info) {
  std::string placement = param_info.param.placement;
  std::replace(placement.begin(), placement.end(), '-', '_');
  return fmt::format("w{}_{}", param_info.param.world, placement);
});

TEST(Zero3, Bf16LossesTrackTheFp32Reference) {
  expect_all_ok(run_ranks(2, {zero3_worker(), "parity", "quarter", "bf16"}, std::chrono::seconds(300)));
}

// strata.gradient_shard_dtype bf16 with bf16 compute: bit for bit as fp32 shards, at half
// the bytes, with the gradients on host (shards made from the master) and split between
// host and nvme (optimizer_max_in_cpu, as `strata bench zero3 --largest` runs).
TEST(Zero3, Bf16GradientShardsLoseNothingWithBf16Compute) {
  const auto dir = testing::fresh_temp_dir("zero3-bf16-grads");
  for (const char* placement : {"host", "nvme-optim-split"}) {
    expect_all_ok(run_ranks(2, {zero3_worker(), "bf16grads", placement}, std::chrono::seconds(120),
                            {{"STRATA_TEST_NVME", dir.string()}}));
  }
  std::filesystem::remove_all(dir);
}

TEST(Zero3, GatheredBytesStayWithinMaxLivePlusOneChunkAndTheStepTraceHasEveryTrack) {
  const auto dir = testing::fresh_temp_dir("zero3-mem");
  expect_all_ok(run_ranks(2, {zero3_worker(), "memory"}, std::chrono::seconds(120), {{"STRATA_TEST_NVME", dir.string()}}));
  std::filesystem::remove_all(dir);
}

TEST(Zero3, DataDependentBranchInvalidatesTheTraceAndResultsStayExact) {
  expect_all_ok(run_ranks(2, {units_worker(), "branch"}));
}

TEST(Zero3, NestedUnitsMatchUnshardedTraining) { expect_all_ok(run_ranks(2, {units_worker(), "nested"})); }

TEST(Zero3, AnInnerUnitsOutputReturnedByItsEnclosingUnitMatchesUnshardedTraining) {
  expect_all_ok(run_ranks(2, {units_worker(), "nested_tail"}, std::chrono::seconds(60)));
}

// Note [adopted parameters]: units_worker adopt.
TEST(Zero3, AUnitComputingWithAnotherModulesParameterAdoptsItAndMatchesLibTorch) {
  expect_all_ok(run_ranks(2, {units_worker(), "adopt"}, std::chrono::seconds(60)));
}

// Note [covered units]: units_worker routed (a mixture of experts as a leaf unit).
TEST(Zero3, ALeafUnitWhoseInnerUnitsDifferAcrossRanksMatchesLibTorch) {
  expect_all_ok(run_ranks(2, {units_worker(), "routed"}, std::chrono::seconds(60)));
}

TEST(Zero3, TracesThatDifferAcrossRanksAreAClearError) {
  auto rs = run_ranks(2, {units_worker(), "diverge"}, std::chrono::seconds(60));
  for (const auto& r : rs) {
    EXPECT_EQ(r.exit_code, 3) << all_output(rs);
    EXPECT_NE(r.output.find("the access trace differs across ranks"), std::string::npos) << all_output(rs);
  }
}

// Frozen weights, a parameter without a gradient, a unit called twice and a skip
// connection, at stages 1-3 and every placement (awkward_case in units_worker.cpp).
class Awkward : public ::testing::TestWithParam<int> {};

TEST_P(Awkward, EveryPlacementMatchesLibTorchAndTheConsolidatedWeights) {
  const auto dir = testing::fresh_temp_dir("awkward");
  expect_all_ok(run_ranks(2, {units_worker(), "awkward", std::to_string(GetParam())}, std::chrono::seconds(300),
                          {{"STRATA_TEST_NVME", dir.string()}}));
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Stages, Awkward, ::testing::Values(1, 2, 3),
                         [](const auto& param_info) { return fmt::format("stage{}", param_info.param); });

TEST(Zero3, AUnitReturningATupleMatchesLibTorchAtWorldSizes1To4) {
  for (int world : {1, 2, 3, 4}) expect_all_ok(run_ranks(world, {units_worker(), "tuple"}));
}

TEST(Zero3, StageTwoHoldsOneWorldthOfStageZerosGradientsPlusOneBucketAndTheTiedChunk) {
  for (int world : {2, 4}) expect_all_ok(run_ranks(world, {zero3_worker(), "gradmem"}));
}

// Every nvme record at a real size (64 MiB): stage 2's optimizer state (in two parameter
// groups), stage 3's parameter shards and optimizer state, stage 2's bf16 state and
// gradient shards split between host and nvme and stepped by ATen ops, stage 3's gradient
// shards kept on compute until the step (Note [gradients kept on compute]), three steps
// against plain LibTorch. One test per case, so that ctest can run them next to others
// (each takes minutes).
class RealSize : public ::testing::TestWithParam<const char*> {};

TEST_P(RealSize, NvmeRecordsMatchLibTorch) {
  const auto dir = testing::fresh_temp_dir("bigtier");
  expect_all_ok(run_ranks(2, {units_worker(), "bigtier", GetParam()}, std::chrono::seconds(600),
                          {{"STRATA_TEST_NVME", dir.string()}}));
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Stages, RealSize, ::testing::Values("2", "3", "2-bf16-split", "3-grads-on-compute"), [](const auto& param_info) {
  std::string name = fmt::format("stage{}", param_info.param);
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
});

TEST(Zero3, ParamBuffersSmallerThanAShardAreRefusedAtSetup) {
  const auto dir = testing::fresh_temp_dir("smallbuf");
  expect_all_ok(run_ranks(1, {zero3_worker(), "smallbuffers"}, std::chrono::seconds(60), {{"STRATA_TEST_NVME", dir.string()}}));
  std::filesystem::remove_all(dir);
}

TEST(Zero3, DeferredConstructionEqualsEagerBitForBitAtEveryStage) {
  for (const char* stage : {"0", "1", "2", "3"}) {
    const auto dir = testing::fresh_temp_dir("deferred");
    expect_all_ok(run_ranks(2, {zero3_worker(), "deferred", stage}, std::chrono::seconds(300),
                            {{"STRATA_TEST_NVME", dir.string()}}));
    std::filesystem::remove_all(dir);
  }
}

TEST(Zero3, AnOverBudgetBufferInBackwardIsCannotFitNotInternal) {
  auto rs = run_ranks(1, {units_worker(), "bwdbudget"});
  ASSERT_EQ(rs[0].exit_code, 3) << all_output(rs);
  EXPECT_NE(rs[0].output.find("EXPECTED FAILURE: resource_exhausted: cannot fit"), std::string::npos) << all_output(rs);
}

// Note [the model's exceptions]: at two ranks, stages 2 and 3, everything on nvme.
TEST(Zero3, TheModelsBackwardExceptionIsHandedOverAndASkippedBatchLeavesNothing) {
  for (const char* stage : {"2", "3"}) {
    const auto dir = testing::fresh_temp_dir("bwdraises");
    expect_all_ok(run_ranks(2, {units_worker(), "bwdraises", stage}, std::chrono::seconds(120),
                            {{"STRATA_TEST_NVME", dir.string()}}));
    std::filesystem::remove_all(dir);
  }
}

TEST(Zero3, OverBudgetConfigurationFailsAtSetup) {
  auto rs = run_ranks(2, {zero3_worker(), "overbudget"});
  for (const auto& r : rs) {
    EXPECT_EQ(r.exit_code, 3) << all_output(rs);
    EXPECT_NE(r.output.find("cannot fit: need"), std::string::npos) << all_output(rs);
    EXPECT_NE(r.output.find("budget 16.0 KiB"), std::string::npos) << all_output(rs);
  }
}

}  // namespace
}  // namespace strata
