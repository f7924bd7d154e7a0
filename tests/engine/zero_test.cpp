// ZeRO stages 1 and 2 against plain LibTorch, over real processes.
#include <algorithm>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "support/multirank.h"
#include "support/rank_checks.h"

namespace strata {
namespace {

using testing::all_output;
using testing::expect_all_ok;
using testing::run_ranks;

std::string zero_worker() { return std::string(STRATA_TEST_BIN_DIR) + "/zero_worker"; }

struct ParityCase {
  int world;
  int stage;
  const char* optim;
};

class ZeroParity : public ::testing::TestWithParam<ParityCase> {};

TEST_P(ZeroParity, MatchesTorchOptimFor20Steps) {
  const auto& p = GetParam();
  expect_all_ok(run_ranks(p.world, {zero_worker(), "parity", std::to_string(p.stage), p.optim}));
}

std::vector<ParityCase> parity_cases() {
  std::vector<ParityCase> cases;
  for (int world : {1, 2, 3, 4})
    for (int stage : {1, 2})
      for (const char* optim : {"adam", "adamw", "sgd"}) cases.push_back({world, stage, optim});
  cases.push_back({3, 2, "adagrad"});
  cases.push_back({2, 1, "lion"});
  cases.push_back({3, 2, "lion"});
  cases.push_back({3, 1, "lamb"});
  cases.push_back({2, 2, "lamb"});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(All, ZeroParity, ::testing::ValuesIn(parity_cases()), [](const auto& param_info) {
  const ParityCase& c = param_info.param;
  return fmt::format("w{}_stage{}_{}", c.world, c.stage, c.optim);
});

// Stages 1 and 2 with the optimizer state on host (ZeRO-Offload) or on nvme files, at
// world sizes 1-4, against torch::optim in one process.
struct OffloadCase {
  int world;
  int stage;
  const char* device;
};

class ZeroOffloadParity : public ::testing::TestWithParam<OffloadCase> {};

TEST_P(ZeroOffloadParity, MatchesTorchOptimFor20Steps) {
  const auto& p = GetParam();
  const auto dir = testing::fresh_temp_dir("zero-offload");
  expect_all_ok(run_ranks(p.world, {zero_worker(), "parity", std::to_string(p.stage), "adamw", p.device},
                          std::chrono::seconds(120), {{"STRATA_TEST_NVME", dir.string()}}));
  std::filesystem::remove_all(dir);
}

// "nvme" at stage 2 puts the gradient shards on nvme too (Note [gradients on nvme]);
// "nvme-hostgrads" keeps them in host memory; "nvme-noread", "nvme-nowrite" and
// "nvme-serial" switch the pipeline's overlap off (Note [nvme optimizer state]);
// "nvme-subgroups" steps the state in sub-groups smaller than a chunk shard.
std::vector<OffloadCase> offload_cases() {
  std::vector<OffloadCase> cases;
  for (int world : {1, 2, 3, 4})
    for (int stage : {1, 2})
      for (const char* device : {"cpu", "nvme"}) cases.push_back({world, stage, device});
  for (int world : {1, 2}) cases.push_back({world, 2, "nvme-hostgrads"});
  // pipeline_read / pipeline_write off, each with exactly the buffers it needs
  for (const char* device : {"nvme-noread", "nvme-nowrite", "nvme-serial"}) cases.push_back({2, 2, device});
  // sub_group_size below the chunk shard (Note [optimizer sub-groups])
  for (int stage : {1, 2}) cases.push_back({1, stage, "nvme-subgroups"});
  cases.push_back({2, 2, "nvme-subgroups"});
  // strata.optimizer_max_in_cpu: some chunks' state on host, the rest on nvme.
  for (int world : {1, 2})
    for (int stage : {1, 2}) cases.push_back({world, stage, "nvme-host-split"});
  // The step and the gradient statistics as ATen ops (what state on a GPU takes), on a
  // CPU: state on compute at stages 0-2, on host, and nvme sub-groups.
  for (int stage : {0, 1, 2}) cases.push_back({2, stage, "tensor-ops"});
  cases.push_back({2, 2, "cpu-tensor-ops"});
  cases.push_back({1, 2, "nvme-subgroups-tensor-ops"});
  // strata.optimizer_state_dtype bf16: on compute, host and nvme sub-groups, and stepped
  // by the tensor ops.
  // strata.gradient_shards_on_compute: stage 2's shards kept on compute until the step,
  // with the state on host, and split between host and nvme.
  for (const char* device : {"cpu-grads-on-compute", "nvme-host-split-grads-on-compute"}) cases.push_back({2, 2, device});
  cases.push_back({2, 2, "bf16-state"});
  cases.push_back({2, 1, "bf16-state-cpu"});
  cases.push_back({2, 2, "bf16-state-nvme-subgroups"});
  cases.push_back({1, 2, "bf16-state-tensor-ops"});
  // strata.gradient_shard_dtype bf16: shards on host at stages 1 and 2, on nvme (their
  // records, whole and in sub-groups), and stepped by the tensor ops.
  cases.push_back({2, 1, "bf16-grads-cpu"});
  cases.push_back({2, 2, "bf16-grads-cpu"});
  cases.push_back({2, 2, "bf16-grads-nvme-subgroups"});
  cases.push_back({1, 2, "bf16-grads-nvme"});
  cases.push_back({2, 2, "bf16-grads-cpu-tensor-ops"});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(All, ZeroOffloadParity, ::testing::ValuesIn(offload_cases()), [](const auto& param_info) {
  const OffloadCase& c = param_info.param;
  std::string device = c.device;
  std::replace(device.begin(), device.end(), '-', '_');
  return fmt::format("w{}_stage{}_{}", c.world, c.stage, device);
});

TEST(Zero, AModuleRegisteredTwiceIsOneParameterAtEveryStage) {
  for (const char* stage : {"1", "2", "3"}) expect_all_ok(run_ranks(2, {zero_worker(), "shared", stage}));
}

TEST(Zero, ABadParameterIsNamedByItsIndex) { expect_all_ok(run_ranks(1, {zero_worker(), "badparam"})); }

TEST(Zero, WrappedTorchOptimizerMatches) {
  expect_all_ok(run_ranks(3, {zero_worker(), "parity", "2", "adamw", "wrap"}));
}

// Note [parameter groups]: per-group lr scales and weight decays against torch::optim's
// groups, for every fused optimizer, the state on nvme, and the tensor-op step; the
// consolidated optimizer keeps the groups and loads back.
TEST(Zero, ParameterGroupsMatchTorchOptim) {
  for (const char* optim : {"adam", "adamw", "sgd", "adagrad", "lion", "lamb"}) {
    expect_all_ok(run_ranks(2, {zero_worker(), "groups", "2", optim}));
  }
  expect_all_ok(run_ranks(2, {zero_worker(), "groups", "1", "adamw", "tensor-ops"}));
  expect_all_ok(run_ranks(2, {zero_worker(), "groups", "1", "lamb", "tensor-ops"}));
  const auto dir = testing::fresh_temp_dir("zero-groups");
  expect_all_ok(run_ranks(2, {zero_worker(), "groups", "2", "adamw", "nvme"}, std::chrono::seconds(120),
                          {{"STRATA_TEST_NVME", dir.string()}}));
  std::filesystem::remove_all(dir);
}

TEST(Zero, StageOneAndTwoAgree) { expect_all_ok(run_ranks(3, {zero_worker(), "stages", "adam"})); }

TEST(Zero, AccumulationOverFourMicroStepsEqualsOneLargeBatch) {
  expect_all_ok(run_ranks(2, {zero_worker(), "accum", "2"}));
  expect_all_ok(run_ranks(2, {zero_worker(), "accum", "1"}));
}

// Gradient shards on nvme: partial sums read back and added across micro-steps, and
// the clipping norm taken from the shards before they are written.
TEST(Zero, NvmeGradientsAccumulateAndClipExactly) {
  const auto dir = testing::fresh_temp_dir("nvme-grads");
  for (int world : {1, 2}) {
    for (const char* mode : {"nvme", "nvme-subgroups"}) {
      expect_all_ok(run_ranks(world, {zero_worker(), "accum", "2", mode}, std::chrono::seconds(120),
                              {{"STRATA_TEST_NVME", dir.string()}}));
      for (const char* norm : {"2", "inf"}) {
        expect_all_ok(run_ranks(world, {zero_worker(), "clip", "2", norm, mode}, std::chrono::seconds(120),
                                {{"STRATA_TEST_NVME", dir.string()}}));
      }
    }
  }
  std::filesystem::remove_all(dir);
}

// strata.gradient_shard_dtype bf16: micro-steps add into bf16 shards (on compute, and
// through nvme records read back), against torch::optim fed the same bf16 sums; the
// clipping norm over bf16 shards against clip_grad_norm_ over the rounded gradients.
TEST(Zero, Bf16GradientShardsAccumulateAndClipLikeTorchOnTheSameSums) {
  const auto dir = testing::fresh_temp_dir("bf16-grads");
  const std::map<std::string, std::string> env = {{"STRATA_TEST_NVME", dir.string()}};
  for (const char* mode : {"", "nvme", "nvme-subgroups"})
    expect_all_ok(run_ranks(1, {zero_worker(), "accum-bf16", mode}, std::chrono::seconds(120), env));
  for (int world : {1, 2})
    for (const char* norm : {"2", "inf"})
      expect_all_ok(run_ranks(world, {zero_worker(), "clip", "2", norm, "bf16-grads-nvme"}, std::chrono::seconds(120), env));
  expect_all_ok(run_ranks(2, {zero_worker(), "clip", "2", "1", "bf16-grads"}));
  std::filesystem::remove_all(dir);
}

// A failed or corrupted nvme read in the middle of training stops every rank with an
// error within the timeout; the rank that read it names the record and its file.
TEST(Zero, AnNvmeReadFaultStopsEveryRankAndNamesTheRecord) {
  for (const char* kind : {"eio", "corrupt"}) {
    const auto dir = testing::fresh_temp_dir("nvme-fault");
    auto rs = run_ranks(2, {zero_worker(), "fault", kind}, std::chrono::seconds(90), {{"STRATA_TEST_NVME", dir.string()}});
    for (const auto& r : rs) EXPECT_EQ(r.exit_code, 3) << kind << "\n" << all_output(rs);
    const std::string& last = rs.back().output;
    EXPECT_NE(last.find("EXPECTED FAILURE"), std::string::npos) << all_output(rs);
    EXPECT_NE(last.find("optimizer/chunk"), std::string::npos) << kind << ": the record is not named\n" << all_output(rs);
    EXPECT_NE(last.find("optimizer sub-group"), std::string::npos) << kind << ": what the record held is not said\n"
                                                                   << all_output(rs);
    EXPECT_NE(last.find("optimizer.swp"), std::string::npos) << kind << ": the file is not named\n" << all_output(rs);
    std::filesystem::remove_all(dir);
  }
}

TEST(Zero, ClippingEqualsTorchForNorms1_2_Inf) {
  for (const char* norm : {"1", "2", "inf"}) expect_all_ok(run_ranks(3, {zero_worker(), "clip", "2", norm}));
  expect_all_ok(run_ranks(2, {zero_worker(), "clip", "1", "2"}));
}

// The gradient statistics as tensor ops (what a gradient on a GPU takes): the norms
// clipping uses, at stage 2 (fp32 shards, and shards taken before they go to nvme) and
// stage 1 (slices of the all-reduced buffer), and the overflow that skips a step.
TEST(Zero, TensorOpGradStatsClipAndSkipLikeTorch) {
  for (const char* norm : {"1", "2", "inf"}) expect_all_ok(run_ranks(2, {zero_worker(), "clip", "2", norm, "tensor-ops"}));
  expect_all_ok(run_ranks(2, {zero_worker(), "clip", "1", "2", "tensor-ops"}));
  expect_all_ok(run_ranks(2, {zero_worker(), "fp16", "2", "tensor-ops"}));
  const auto dir = testing::fresh_temp_dir("clip-nvme-ops");
  expect_all_ok(run_ranks(2, {zero_worker(), "clip", "2", "2", "nvme-tensor-ops"}, std::chrono::seconds(120),
                          {{"STRATA_TEST_NVME", dir.string()}}));
  std::filesystem::remove_all(dir);
}

TEST(Zero, Fp16LossScalerSkipsExactlyTheOverflowingSteps) {
  expect_all_ok(run_ranks(3, {zero_worker(), "fp16", "2"}));
  const auto dir = testing::fresh_temp_dir("fp16-nvme");
  expect_all_ok(run_ranks(2, {zero_worker(), "fp16", "2", "nvme"}, std::chrono::seconds(120), {{"STRATA_TEST_NVME", dir.string()}}));
  std::filesystem::remove_all(dir);
}

TEST(Zero, Bf16ComputeCopiesAreTheRoundedMasters) { expect_all_ok(run_ranks(2, {zero_worker(), "bf16", "2"})); }

TEST(Zero, StateDictSavedAtWorld4LoadsAtWorld2AndContinuesIdentically) {
  const auto dir = testing::fresh_temp_dir("zero-ckpt");
  expect_all_ok(run_ranks(4, {zero_worker(), "save", dir.string(), "10"}));
  expect_all_ok(run_ranks(2, {zero_worker(), "resume", dir.string(), "10"}));
  // Loaded into nvme state while reads of the old state are in flight.
  const auto nvme = testing::fresh_temp_dir("zero-ckpt-nvme");
  expect_all_ok(run_ranks(2, {zero_worker(), "resume", dir.string(), "10", "nvme"}, std::chrono::seconds(120),
                          {{"STRATA_TEST_NVME", nvme.string()}}));
  std::filesystem::remove_all(nvme);
  std::filesystem::remove_all(dir);
}

// bf16 optimizer state goes into the state dict as fp32 tensors of its bf16 values and
// comes back exactly, into memory and onto nvme: the resumed run equals the
// uninterrupted one bit for bit.
TEST(Zero, Bf16StateSavedAndLoadedContinuesBitForBit) {
  const auto dir = testing::fresh_temp_dir("zero-ckpt-bf16");
  expect_all_ok(run_ranks(2, {zero_worker(), "save", dir.string(), "10", "bf16-state"}));
  expect_all_ok(run_ranks(2, {zero_worker(), "resume", dir.string(), "10", "bf16-state"}));
  const auto nvme = testing::fresh_temp_dir("zero-ckpt-bf16-nvme");
  expect_all_ok(run_ranks(2, {zero_worker(), "resume", dir.string(), "10", "bf16-state-nvme"}, std::chrono::seconds(120),
                          {{"STRATA_TEST_NVME", nvme.string()}}));
  std::filesystem::remove_all(nvme);
  std::filesystem::remove_all(dir);
}

TEST(Zero, KilledRankMakesTheOthersFailWithinTheTimeout) {
  auto rs = run_ranks(3, {zero_worker(), "kill", "2"}, std::chrono::seconds(60));
  EXPECT_EQ(rs[2].exit_code, 128 + SIGKILL);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(rs[r].exit_code, 3) << all_output(rs);
    EXPECT_NE(rs[r].output.find("EXPECTED FAILURE at step 5"), std::string::npos) << all_output(rs);
    EXPECT_LT(rs[r].seconds, 30.0);
  }
}

}  // namespace
}  // namespace strata
