// The strata tool as a user runs it: exit codes and what it prints.
#include <filesystem>
#include <fstream>
#include <tuple>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "strata/base/config.h"
#include "support/subprocess.h"

namespace strata {
namespace {

using testing::run_command;
using testing::strata_bin;

std::string write_temp(const std::string& name, const std::string& text) {
  auto path = std::filesystem::temp_directory_path() / name;
  std::ofstream(path) << text;
  return path.string();
}

TEST(Cli, Version) {
  auto r = run_command(strata_bin() + " --version");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("strata " STRATA_VERSION), std::string::npos) << r.output;
}

TEST(Cli, EnvReportsEverySection) {
  auto r = run_command(strata_bin() + " env --dir " + std::filesystem::temp_directory_path().string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* want : {"SIMD targets", "RAM", "LibTorch", "CUDA", "O_DIRECT", "io_uring", "disk", "cores"})
    EXPECT_NE(r.output.find(want), std::string::npos) << want << "\n" << r.output;
}

// The BLAS in use: OpenBLAS as scripts/setup installs it; the reference BLAS (selected
// here through the library path, as an unconfigured machine would have it) with a warning.
TEST(Cli, EnvNamesTheBlasAndWarnsOnTheReferenceOne) {
  auto r = run_command(strata_bin() + " env --dir " + std::filesystem::temp_directory_path().string() + " 2>&1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("BLAS             OpenBLAS"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("warning"), std::string::npos) << r.output;
  if (!std::filesystem::exists("/usr/lib/x86_64-linux-gnu/blas/libblas.so.3")) GTEST_SKIP() << "no reference BLAS";
  r = run_command("LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/blas " + strata_bin() + " env --dir " +
                  std::filesystem::temp_directory_path().string() + " 2>&1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("BLAS             reference BLAS"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("warning: fp32 matrix products run on the reference BLAS"), std::string::npos) << r.output;
}

TEST(Cli, ConfigCheckPrintsWhatAutoResolvedTo) {
  auto path = write_temp("strata_cli_auto.json", R"({"bf16": {"enabled": "auto"}, "train_batch_size": "auto",
      "zero_optimization": {"stage": 3, "max_live_parameters": "auto"}, "strata": {"placement": "auto"}})");
  auto r = run_command(strata_bin() + " config check " + path);  // stdout and stderr
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("auto: bf16.enabled = false"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("auto: zero_optimization.max_live_parameters = 1000000000"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("auto: train_batch_size = 0 (derived from the other batch keys and the world size)"),
            std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("auto: strata.placement"), std::string::npos) << r.output;  // a real choice there
}

TEST(Cli, ConfigKeysJsonIsOneDocumentWithEveryKey) {
  auto r = run_command(strata_bin() + " config keys --json 2>/dev/null");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output, nullptr, false);
  ASSERT_TRUE(j.is_array()) << r.output;
  EXPECT_EQ(j.size(), config_keys().size());
  bool stage = false, scheduler = false;
  for (const auto& k : j) {
    if (k["path"] == "zero_optimization.stage") stage = k["default"] == 0 && k["status"] == "active" && k["range"] == "0..3";
    if (k["path"] == "scheduler.type") scheduler = k["default"] == "none";
  }
  EXPECT_TRUE(stage && scheduler) << j.dump(2);
  EXPECT_NE(run_command(strata_bin() + " config keys --json --markdown").exit_code, 0);
}

TEST(Cli, EnvRejectsMissingDirectory) {
  auto r = run_command(strata_bin() + " env --dir /nonexistent/dir");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("not a directory"), std::string::npos) << r.output;
}

TEST(Cli, ConfigCheckPrintsNormalizedConfig) {
  auto path = write_temp("strata_cli_ok.json", R"({"zero_optimization": {"stage": 2}, "steps_per_print": 5})");
  auto r = run_command(strata_bin() + " config check " + path);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"stage\": 2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("warning: steps_per_print"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"queue_depth\": 8"), std::string::npos) << "defaults are filled in\n" << r.output;
}

TEST(Cli, ConfigCheckFailsOnBadConfig) {
  auto path = write_temp("strata_cli_bad.json", R"({"zero_optimization": {"stage3_prefetch_bucket_sz": 1}})");
  auto r = run_command(strata_bin() + " config check " + path);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("did you mean stage3_prefetch_bucket_size?"), std::string::npos) << r.output;
}

TEST(Cli, EstimatePrintsATablePerTier) {
  auto r = run_command(strata_bin() +
                       " estimate --params 7e9 --largest-layer 2e8 --world 8 --stage 3 --offload-optimizer nvme --bf16");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* want : {"compute", "host", "nvme", "params", "grads", "optimizer", "buffers", "total",
                           "estimate_zero3_model_states_mem_needs"})
    EXPECT_NE(r.output.find(want), std::string::npos) << want << "\n" << r.output;
}

TEST(Cli, EstimateJsonMatchesDeepSpeedOnTheGpu) {
  // ZeRO-3 without offload: compute = 4 * largest layer + 18 P / N, DeepSpeed's formula.
  auto r = run_command(strata_bin() + " estimate --params 1e9 --largest-layer 5e7 --world 4 --stage 3 --json 2>/dev/null");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output);
  const std::uint64_t want = 4 * 50'000'000ull + 18 * 1'000'000'000ull / 4;
  EXPECT_EQ(j["tiers"]["compute"]["total"].get<std::uint64_t>(), want) << r.output;
  EXPECT_EQ(j["deepspeed"]["gpu_bytes"].get<std::uint64_t>(), want);
  EXPECT_EQ(j["tiers"]["nvme"]["optimizer"].get<std::uint64_t>(), 0u);
  std::uint64_t sum = 0;
  for (const char* tier : {"compute", "host", "nvme"})
    for (const char* kind : {"params", "grads", "optimizer", "buffers"}) sum += j["tiers"][tier][kind].get<std::uint64_t>();
  EXPECT_EQ(j["total"].get<std::uint64_t>(), sum);
}

// strata.optimizer_state_dtype and gradient_shard_dtype in bf16 (--largest's layout):
// with the state on nvme, 8 bytes of state and 2 of gradient a shard element there
// instead of 12 and 4.
TEST(Cli, EstimateTakesBf16StateAndGradientShards) {
  const std::string base = strata_bin() + " estimate --params 1e9 --world 2 --stage 3 --offload-param cpu "
                                          "--offload-optimizer nvme --bf16 --json";
  auto plain = run_command(base + " 2>/dev/null");
  auto lean = run_command(base + " --bf16-state --bf16-grads 2>/dev/null");
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  ASSERT_EQ(lean.exit_code, 0) << lean.output;
  const auto p = nlohmann::json::parse(plain.output), l = nlohmann::json::parse(lean.output);
  const std::uint64_t s = 1'000'000'000ull / 2;
  EXPECT_EQ(p["tiers"]["nvme"]["optimizer"].get<std::uint64_t>(), 12 * s);
  EXPECT_EQ(p["tiers"]["nvme"]["grads"].get<std::uint64_t>(), 4 * s);
  EXPECT_EQ(l["tiers"]["nvme"]["optimizer"].get<std::uint64_t>(), 8 * s);
  EXPECT_EQ(l["tiers"]["nvme"]["grads"].get<std::uint64_t>(), 2 * s);
  EXPECT_EQ(l["inputs"]["gradient_shard_dtype"], "bf16");
  EXPECT_EQ(p["inputs"]["optimizer_state_dtype"], "fp32");
}

// --optimizer: Lion (and Adagrad, SGD's momentum) keeps one state tensor beside the
// master, 8 bytes a shard element in fp32 where Adam keeps 12; the default is AdamW.
TEST(Cli, EstimateCountsTheOptimizersStateTensors) {
  const std::string base = strata_bin() + " estimate --params 1e9 --world 2 --stage 2 --offload-optimizer cpu --json";
  const std::uint64_t s = 1'000'000'000ull / 2;
  for (const auto& [flag, bytes, states] : {std::tuple{"", 12 * s, 2}, std::tuple{" --optimizer Adam", 12 * s, 2},
                                           std::tuple{" --optimizer lion", 8 * s, 1},
                                           std::tuple{" --optimizer Lion --bf16-state", 6 * s, 1},
                                           std::tuple{" --optimizer SGD", 8 * s, 1},
                                           std::tuple{" --optimizer Lamb", 12 * s, 2}}) {
    auto r = run_command(base + flag + " 2>/dev/null");
    ASSERT_EQ(r.exit_code, 0) << flag << "\n" << r.output;
    const auto j = nlohmann::json::parse(r.output);
    EXPECT_EQ(j["tiers"]["host"]["optimizer"].get<std::uint64_t>(), bytes) << flag;
    EXPECT_EQ(j["inputs"]["optimizer_states"].get<int>(), states) << flag;
  }
  EXPECT_NE(run_command(base + " --optimizer RMSprop 2>&1").exit_code, 0);
}

TEST(Cli, EstimateFromAModelShape) {
  auto r = run_command(strata_bin() + " estimate --model gpt:12x768 --world 2 --stage 3 --json 2>/dev/null");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["inputs"]["params"].get<std::uint64_t>(), 124'439'808u);
  EXPECT_EQ(j["inputs"]["largest_layer"].get<std::uint64_t>(), 50257u * 768);
  EXPECT_GE(j["inputs"]["padded_params"].get<std::uint64_t>(), 124'439'808u);
  EXPECT_GT(j["chunks"]["count"].get<std::uint64_t>(), 0u);
}

TEST(Cli, EstimateRejectsBadInput) {
  for (const char* args : {"--params 1e9 --model gpt:2x64", "--model gpt:2", "--params lots", "--stage 2 --params 1e9 --offload-param cpu",
                           "--params 1e9 --bf16 --fp16"}) {
    auto r = run_command(strata_bin() + " estimate " + args);
    EXPECT_NE(r.exit_code, 0) << args << "\n" << r.output;
  }
}

TEST(Cli, UnknownSubcommandFails) {
  auto r = run_command(strata_bin() + " frobnicate");
  EXPECT_NE(r.exit_code, 0);
}

}  // namespace
}  // namespace strata
