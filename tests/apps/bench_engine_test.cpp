// strata bench zero, zero3, train, python and infinity as a user runs them, at small sizes: with --json,
// stdout is exactly one JSON document (the ranks' progress goes to stderr), and the
// figures a script reads are there.
#include <filesystem>
#include <map>

#include <gtest/gtest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "support/subprocess.h"
#include "support/multirank.h"

namespace strata {
namespace {

using testing::run_command;
using testing::strata_bin;

nlohmann::json run_json(const std::string& args) {
  // stdout only; everything else goes to stderr.
  auto r = run_command(fmt::format("({} bench {} --json 2>/dev/null)", strata_bin(), args));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  auto doc = nlohmann::json::parse(r.output, nullptr, false);
  EXPECT_FALSE(doc.is_discarded()) << "stdout is not one JSON document:\n" << r.output;
  return doc;
}

TEST(BenchZero, JsonIsTheOnlyOutputAndStageTwoHoldsFewerGradientBytes) {
  auto doc = run_json("zero --params 2M --hidden 256 --steps 1 --batch 4 --reduce-bucket 250K");
  ASSERT_TRUE(doc.is_object());
  EXPECT_EQ(doc["bench"], "zero");
  for (const char* k : {"stage1_state_bytes_vs_stage0", "stage2_state_bytes_vs_stage0", "stage2_grad_bytes_vs_stage0",
                        "stage1_iteration_vs_stage0"}) {
    ASSERT_TRUE(doc["ratios"].contains(k)) << k << "\n" << doc.dump(2);
  }
  EXPECT_LT(doc["ratios"]["stage2_grad_bytes_vs_stage0"].get<double>(), 1.0) << doc.dump(2);
  EXPECT_NEAR(doc["ratios"]["stage1_state_bytes_vs_stage0"].get<double>(), 0.5, 0.02) << doc.dump(2);
}

TEST(BenchZero3, JsonIsTheOnlyOutput) {
  auto doc = run_json("zero3 --model tiny --steps 1 --seq 32 --batch 2");
  ASSERT_TRUE(doc.is_object());
  EXPECT_EQ(doc["bench"], "zero3");
  for (const char* k : {"stage3_tokens_vs_stage0", "stage3_quarter_tokens_vs_stage0", "host_compute_bytes_vs_plan"}) {
    ASSERT_TRUE(doc["ratios"].contains(k)) << k << "\n" << doc.dump(2);
  }
  EXPECT_DOUBLE_EQ(doc["ratios"]["host_compute_bytes_vs_plan"].get<double>(), 1.0) << doc.dump(2);
}

// A model of two small blocks: one block's gathered parameters exceed a quarter of the
// model, so the quarter budget cannot be planned. The bench still reports the three
// configurations it measured and names the one it could not, with the planner's reason
// (it used to stop at the quarter budget and print nothing).
TEST(BenchZero3, AModelTooSmallForTheQuarterBudgetReportsTheOthers) {
  auto doc = run_json("zero3 --model custom:2x128x4 --steps 1 --seq 32 --batch 2");
  ASSERT_TRUE(doc.is_object());
  ASSERT_TRUE(doc.contains("skipped")) << doc.dump(2);
  ASSERT_TRUE(doc["skipped"].contains("stage3_quarter")) << doc.dump(2);
  EXPECT_NE(doc["skipped"]["stage3_quarter"].get<std::string>().find("cannot fit"), std::string::npos) << doc.dump(2);
  EXPECT_EQ(doc["skipped"].size(), 1u) << doc.dump(2);
  for (const char* k : {"stage3_tokens_vs_stage0", "stage3_auto_tokens_vs_stage0"}) {
    ASSERT_TRUE(doc["ratios"].contains(k)) << k << "\n" << doc.dump(2);
    EXPECT_GT(doc["ratios"][k].get<double>(), 0.0) << k;
  }
  EXPECT_FALSE(doc["ratios"].contains("stage3_quarter_tokens_vs_stage0")) << doc.dump(2);
  for (const auto& r : doc["rows"]) {
    EXPECT_EQ(r["name"].get<std::string>().find("stage3_quarter"), std::string::npos) << r.dump();
  }
}

// The GPU comparison needs a CUDA build and a GPU: without them it says so and exits 2,
// before starting any rank (the device check runs it for real).
TEST(BenchZero3, TheGpuComparisonNeedsACudaBuildAndAGpu) {
#ifdef STRATA_CUDA
  GTEST_SKIP() << "a CUDA build: scripts/device-check runs the comparison itself";
#endif
  const auto r = testing::run_command(testing::strata_bin() + " bench zero3 --device cuda --json");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--device cuda needs strata built with CUDA and a GPU"), std::string::npos) << r.output;
}

// The largest-model search (--largest, on a GPU) on simulated attempts: under strata
// models up to 37 layers train, under FSDP2 up to 18. From one layer it grows by a
// quarter until an attempt fails, then bisects: it must land on 37 and 18 exactly and
// report them as parameters, with strata's over FSDP2's as the ratio.
TEST(BenchZero3, TheLargestModelSearchFindsTheLastModelThatTrains) {
  auto doc = run_json("zero3 --largest-simulate 37 --largest-attempts 20 --largest-width 256");
  ASSERT_TRUE(doc.is_object());
  std::map<std::string, nlohmann::json> rows;
  for (const auto& r : doc["rows"]) rows[r["name"].get<std::string>()] = r;
  ASSERT_TRUE(rows.contains("strata_offload largest model") && rows.contains("fsdp2_cpu_offload largest model"))
      << doc.dump(2);
  // custom:Lx256x2: 256 * 256 + 1024 * 256 + L * (12 * 256^2 + 13 * 256) + 2 * 256 parameters.
  auto params = [](double layers) { return (256.0 * 256 + 1024 * 256 + layers * (12 * 65536 + 13 * 256) + 512) / 1e9; };
  EXPECT_NEAR(rows["strata_offload largest model"]["value"].get<double>(), params(37), 1e-12) << doc.dump(2);
  EXPECT_NEAR(rows["fsdp2_cpu_offload largest model"]["value"].get<double>(), params(18), 1e-12) << doc.dump(2);
  EXPECT_NE(rows["strata_offload largest model"]["note"].get<std::string>().find("37 layers"), std::string::npos);
  EXPECT_NE(rows["strata_offload largest model"]["note"].get<std::string>().find("41x"), std::string::npos)
      << "the first attempt that failed is listed";
  EXPECT_NEAR(doc["ratios"]["strata_largest_vs_fsdp2"].get<double>(), params(37) / params(18), 1e-9);
  EXPECT_NEAR(doc["ratios"]["strata_largest_vs_fsdp2_smallest_failure"].get<double>(), params(37) / params(19), 1e-9);
  // Too few attempts to bracket: the largest that trained so far.
  auto short_doc = run_json("zero3 --largest-simulate 37 --largest-attempts 3 --largest-width 256");
  for (const auto& r : short_doc["rows"]) {
    if (r["name"] == "strata_offload largest model") {
      EXPECT_NEAR(r["value"].get<double>(), params(3), 1e-12);
    }
  }
}

// Two chosen attempts (a device call has minutes, not hours): FSDP2 fails at F layers,
// strata trains at S. No FSDP2 model trained, so there is no ratio of largest models;
// FSDP2's largest is below F, so S's parameters over F's bound that ratio from below.
// Each attempt's outcome is printed as it ends.
TEST(BenchZero3, TwoChosenAttemptsBoundTheRatioFromBelow) {
  auto params = [](double layers) { return (256.0 * 256 + 1024 * 256 + layers * (12 * 65536 + 13 * 256) + 512) / 1e9; };
  const auto r = testing::run_command("(" + testing::strata_bin() +
                                      " bench zero3 --largest-simulate 37 --largest-attempts 1 --largest-width 256"
                                      " --largest-start-strata 36 --largest-start-fsdp2 19 --json >/dev/null)");
  EXPECT_NE(r.output.find("FSDP2 at 19 layers"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("did not train"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("strata at 36 layers"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("trained 3 steps"), std::string::npos) << r.output;
  auto doc = run_json("zero3 --largest-simulate 37 --largest-attempts 1 --largest-width 256 --largest-start-strata 36 "
                      "--largest-start-fsdp2 19");
  ASSERT_TRUE(doc.is_object());
  std::map<std::string, nlohmann::json> rows;
  for (const auto& row : doc["rows"]) rows[row["name"].get<std::string>()] = row;
  ASSERT_TRUE(rows.contains("fsdp2_cpu_offload smallest failure")) << doc.dump(2);
  EXPECT_NEAR(rows["fsdp2_cpu_offload smallest failure"]["value"].get<double>(), params(19), 1e-12);
  EXPECT_EQ(rows["fsdp2_cpu_offload largest model"]["value"].get<double>(), 0.0);
  EXPECT_NEAR(rows["strata_offload largest model"]["value"].get<double>(), params(36), 1e-12);
  EXPECT_FALSE(rows.contains("strata_offload smallest failure")) << "strata's one attempt trained";
  EXPECT_FALSE(doc["ratios"].contains("strata_largest_vs_fsdp2")) << doc.dump(2);
  EXPECT_NEAR(doc["ratios"]["strata_largest_vs_fsdp2_smallest_failure"].get<double>(), params(36) / params(19), 1e-9);
}

TEST(BenchZero3, TheLargestModelComparisonNeedsTheGpu) {
  for (const char* flag : {"--largest", "--largest-only"}) {
    const auto r = testing::run_command(testing::strata_bin() + " bench zero3 --json " + flag);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("--largest compares with FSDP2 on a GPU: it needs --device cuda"), std::string::npos)
        << r.output;
  }
}

TEST(BenchTrain, JsonHasEveryStageNextToThePyTorchBaseline) {
  auto doc = run_json("train --model tiny --steps 3 --seq 32 --stages 1,3");
  ASSERT_TRUE(doc.is_object());
  EXPECT_EQ(doc["bench"], "train");
  for (const char* k : {"stage1_tokens_vs_torch_zero", "stage3_tokens_vs_torch_zero"}) {
    ASSERT_TRUE(doc["ratios"].contains(k)) << k << "\n" << doc.dump(2);
    EXPECT_GT(doc["ratios"][k].get<double>(), 0.0);
  }
  EXPECT_GT(doc["figures"]["torch DDP+ZeRO tokens/s"].get<double>(), 0.0);
}

// The plain-PyTorch GPT through strata.fully_shard and strata.initialize next to the C++
// API (strata train) and DDP: the build's Python package, found without PYTHONPATH.
TEST(BenchPython, JsonHasBothFrontEndsNextToTheCppApi) {
  auto doc = run_json("python --model tiny --steps 3 --seq 32 --batch 2 --repeats 1");
  ASSERT_TRUE(doc.is_object());
  EXPECT_EQ(doc["bench"], "python");
  for (const char* k : {"python_fully_shard_vs_cpp", "python_initialize_vs_cpp", "cpp_vs_ddp"}) {
    ASSERT_TRUE(doc["ratios"].contains(k)) << k << "\n" << doc.dump(2);
    EXPECT_GT(doc["ratios"][k].get<double>(), 0.0) << k;
  }
  EXPECT_GT(doc["figures"]["torch DDP tokens/s"].get<double>(), 0.0);
}

TEST(BenchInfinity, JsonHasTheRatiosAndTheNvmeBytesOfEachPlacement) {
  const auto dir = testing::fresh_temp_dir("bench-infinity");
  auto doc = run_json(fmt::format("infinity --model tiny --steps 3 --seq 32 --batch 2 --dir {}", dir.string()));
  ASSERT_TRUE(doc.is_object());
  EXPECT_EQ(doc["bench"], "infinity");
  for (const char* k : {"optimizer_nvme_vs_disk", "step_nvme_vs_host", "step_nvme_all_vs_host", "nvme_bytes_bf16_vs_fp32",
                        "step_bf16_vs_fp32_nvme"}) {
    ASSERT_TRUE(doc["ratios"].contains(k)) << k << "\n" << doc.dump(2);
    EXPECT_GT(doc["ratios"][k].get<double>(), 0.0) << k;
  }
  const auto& f = doc["figures"];
  EXPECT_EQ(f["host nvme read per step"].get<double>(), 0.0) << doc.dump(2);
  // Adam on nvme: master, m, v and the gradient in, master, m, v out (params stay on compute).
  EXPECT_GT(f["nvme_optimizer nvme read per step"].get<double>(), f["nvme_optimizer nvme written per step"].get<double>() * 0.99);
  EXPECT_GT(f["nvme_all nvme read per step"].get<double>(), f["nvme_optimizer nvme read per step"].get<double>());
  for (const char* k : {"host peak RSS", "nvme_optimizer peak RSS", "nvme_all peak RSS", "nvme_optimizer_bf16 peak RSS"})
    EXPECT_GT(f[k].get<double>(), 0.0) << k;
  // bf16 m, v and gradient: per element 4 + 2 + 2 + 2 bytes read and 4 + 2 + 2 + 2 written
  // (the gradient in backward) against 16 and 16: 0.625, less the records kept alike.
  EXPECT_NEAR(doc["ratios"]["nvme_bytes_bf16_vs_fp32"].get<double>(), 0.625, 0.03) << doc.dump(2);
  EXPECT_TRUE(std::filesystem::is_empty(dir)) << "bench infinity left files in " << dir;
  std::filesystem::remove_all(dir);
}

TEST(BenchCkpt, JsonHasTheSaveAndLoadRatiosAndLeavesNoFiles) {
  const auto dir = testing::fresh_temp_dir("bench-ckpt");
  for (const char* offload : {"cpu", "nvme"}) {
    auto doc = run_json(fmt::format("ckpt --model tiny --repeats 2 --offload {} --dir {}", offload, dir.string()));
    ASSERT_TRUE(doc.is_object());
    EXPECT_EQ(doc["bench"], "ckpt");
    for (const char* k : {"save_vs_disk", "load_vs_disk", "blocked_vs_step"}) {
      ASSERT_TRUE(doc["ratios"].contains(k)) << k << "\n" << doc.dump(2);
      EXPECT_GT(doc["ratios"][k].get<double>(), 0.0) << k;
    }
    // With the state on nvme the baseline is the disk copying; the one-way figure rides along.
    EXPECT_EQ(doc["ratios"].contains("save_vs_disk_one_way"), std::string(offload) == "nvme") << doc.dump(2);
    EXPECT_GT(doc["figures"]["disk copy (bench io)"].get<double>(), 0.0) << doc.dump(2);
    // fp32 master + m + v per parameter, plus the chunks' padding.
    const double size = doc["figures"]["checkpoint size"].get<double>(), params = doc["config"]["parameters"].get<double>();
    EXPECT_GE(size, params * 12 / 1e9) << doc.dump(2);
    EXPECT_LT(size, params * 12 * 2 / 1e9) << doc.dump(2);
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir)) << "bench ckpt left files in " << dir;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace strata
