// The strata tool as a user runs it: exit codes and what it prints.
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

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

TEST(Cli, UnknownSubcommandFails) {
  auto r = run_command(strata_bin() + " frobnicate");
  EXPECT_NE(r.exit_code, 0);
}

}  // namespace
}  // namespace strata
