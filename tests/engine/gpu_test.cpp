// The engine on a GPU against plain LibTorch on the same GPU (ctest label `gpu`,
// registered only in a STRATA_CUDA build; scripts/device-check runs them on the device).
// World size 1: one GPU. Each case is a zero3_worker (or units_worker) run with
// STRATA_TEST_DEVICE=cuda, so the model, its reference and the batches live on the GPU
// while the optimizer state lives on the host or on nvme, and the parameter shards
// there or on the GPU (docs/gpu.md).
#include <filesystem>

#include <gtest/gtest.h>

#include "support/multirank.h"

namespace strata {
namespace {

using testing::all_output;
using testing::run_ranks;

void run_on_gpu(const std::vector<std::string>& args, const std::string& worker = "zero3_worker") {
  const auto dir = testing::fresh_temp_dir("gpu");
  std::vector<std::string> argv{std::string(STRATA_TEST_BIN_DIR) + "/" + worker};
  argv.insert(argv.end(), args.begin(), args.end());
  const auto rs = run_ranks(1, argv, std::chrono::seconds(300),
                            {{"STRATA_TEST_NVME", dir.string()}, {"STRATA_TEST_DEVICE", "cuda"}});
  for (const auto& r : rs) ASSERT_EQ(r.exit_code, 0) << all_output(rs);
  std::filesystem::remove_all(dir);
}

// fp32: every loss within 1e-5 of the reference's for 20 steps, the consolidated
// weights every 5 steps (zero3_worker parity).
TEST(Gpu, Fp32ParityWithTheOptimizerOnHost) { run_on_gpu({"parity", "host"}); }
// Parameter shards in GPU memory (at world 1 the whole chunk stays gathered), the
// optimizer state on host: the step's new shard goes back to the GPU.
TEST(Gpu, Fp32ParityWithShardsOnTheGpuAndTheOptimizerOnHost) { run_on_gpu({"parity", "optim-host"}); }
TEST(Gpu, Fp32ParityWithParametersAndOptimizerOnNvme) { run_on_gpu({"parity", "nvme"}); }
// A compute budget of a quarter of the model: chunks leave GPU memory and come back every
// step, within the budget.
TEST(Gpu, AQuarterBudgetEvictsFromGpuMemory) { run_on_gpu({"parity", "quarter"}); }
TEST(Gpu, Bf16LossesTrackTheFp32ReferenceWithin2Percent) { run_on_gpu({"parity", "host", "bf16"}); }
TEST(Gpu, Fp16OverflowSkipsTheStepAndTheScaleHalves) { run_on_gpu({"fp16"}); }
// Frozen parameters, parameters without a gradient, a module called twice, tuple
// outputs and a skip branch, at stage 3 on every placement a GPU takes, against the
// reference and the consolidated weights (units_worker awkward).
TEST(Gpu, AwkwardModelsAtStage3OnEveryPlacement) { run_on_gpu({"awkward", "3"}, "units_worker"); }

}  // namespace
}  // namespace strata
