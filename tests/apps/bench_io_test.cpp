// strata bench io as a user runs it: a tiny size, the JSON shape, the fio baseline
// when fio is installed, argument errors, and no files left behind.
#include <filesystem>
#include <map>
#include <string>

#include <gtest/gtest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "io/io_test_util.h"
#include "support/subprocess.h"

namespace strata {
namespace {

using testing::run_command;
using testing::ScratchDir;
using testing::strata_bin;

nlohmann::json run_json(const std::string& args, int* exit_code) {
  // stdout only: progress lines go to stderr.
  // (fmt, not operator+: GCC 12 gives a false -Wrestrict on "(" + std::string.)
  auto r = run_command(fmt::format("({} bench io {} 2>/dev/null)", strata_bin(), args));
  *exit_code = r.exit_code;
  auto doc = nlohmann::json::parse(r.output, nullptr, false);
  EXPECT_FALSE(doc.is_discarded()) << r.output;
  return doc;
}

TEST(BenchIo, JsonHasEveryFigureAndLeavesNoFiles) {
  ScratchDir dir;
  int rc = -1;
  auto doc = run_json("--dir " + dir.path() + " --size 16MiB --records 8MiB --pool 64MiB --repeats 1 --no-fio --json",
                      &rc);
  ASSERT_EQ(rc, 0);
  EXPECT_EQ(doc["bench"], "io");
  EXPECT_EQ(doc["config"]["fio"], false);
  // qd 8 and 32, one record size, two rings; a write and a read row each.
  ASSERT_EQ(doc["rows"].size(), 10u) << doc.dump(2);
  for (const auto& row : doc["rows"]) {
    EXPECT_GT(row["value"].get<double>(), 0.0) << row.dump();
    EXPECT_EQ(row["unit"], "GB/s");
    EXPECT_NE(row["note"].get<std::string>().find("strata buf:"), std::string::npos) << row.dump();
  }
  EXPECT_TRUE(doc["ratios"].empty());
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

// --copy: one more row per non-ring case, every byte read and written again, the two
// directions in flight together (the ring cases have none).
TEST(BenchIo, CopyPassAddsARowPerRecordSize) {
  ScratchDir dir;
  int rc = -1;
  auto doc = run_json("--dir " + dir.path() + " --size 16MiB --records 8MiB --pool 64MiB --repeats 1 --no-fio --copy --json",
                      &rc);
  ASSERT_EQ(rc, 0);
  ASSERT_EQ(doc["rows"].size(), 13u) << doc.dump(2);
  std::map<std::string, double> by_name;
  for (const auto& row : doc["rows"]) by_name[row["name"].get<std::string>()] = row["value"].get<double>();
  for (const char* c : {"bs 1.0 MiB qd 8 rec 1.0 MiB", "bs 1.0 MiB qd 32 rec 1.0 MiB", "bs 1.0 MiB qd 8 rec 8.0 MiB"}) {
    const std::string label(c);
    ASSERT_TRUE(by_name.contains("copy  " + label)) << label << "\n" << doc.dump(2);
    EXPECT_GT(by_name["copy  " + label], 0.0);
  }
  EXPECT_FALSE(by_name.contains("copy  bs 1.0 MiB qd 8 rec 1.0 MiB ring"));
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

// --records-only: the record sizes asked for and nothing else (a bench's disk baseline).
TEST(BenchIo, RecordsOnlyRunsJustTheRecordCases) {
  ScratchDir dir;
  int rc = -1;
  auto doc = run_json("--dir " + dir.path() + " --size 16MiB --records 8MiB --records-only --queue-depth 8 "
                      "--pool 64MiB --repeats 1 --no-fio --copy --json", &rc);
  ASSERT_EQ(rc, 0);
  ASSERT_EQ(doc["rows"].size(), 3u) << doc.dump(2);
  for (const auto& row : doc["rows"]) {
    EXPECT_NE(row["name"].get<std::string>().find("bs 1.0 MiB qd 8 rec 8.0 MiB"), std::string::npos) << row.dump();
    EXPECT_GT(row["value"].get<double>(), 0.0) << row.dump();
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
  auto r = run_command(strata_bin() + " bench io --no-fio --dir " + dir.path() + " --records '' --records-only");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("--records-only needs"), std::string::npos) << r.output;
}

TEST(BenchIo, FioBaselineGivesTheWorstCaseRatios) {
  if (run_command("fio --version").exit_code != 0) GTEST_SKIP() << "fio is not installed";
  ScratchDir dir;
  int rc = -1;
  auto doc = run_json("--dir " + dir.path() + " --size 16MiB --queue-depth 8 --records 4MiB --pool 64MiB "
                      "--repeats 1 --json", &rc);
  ASSERT_EQ(rc, 0);
  EXPECT_EQ(doc["config"]["fio"], true);
  for (const char* k : {"min_write_vs_fio", "min_read_vs_fio", "ring_4k_read_vs_fio"}) {
    ASSERT_TRUE(doc["ratios"].contains(k)) << k << "\n" << doc.dump(2);
    EXPECT_GT(doc["ratios"][k].get<double>(), 0.0);
  }
  for (const auto& row : doc["rows"]) {
    EXPECT_GT(row["baseline_value"].get<double>(), 0.0) << row.dump();
    EXPECT_NE(row["baseline"].get<std::string>().find("fio bs 1.0 MiB qd 8"), std::string::npos) << row.dump();
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(BenchIo, BadArgumentsFailClearly) {
  ScratchDir dir;
  auto r = run_command(strata_bin() + " bench io --no-fio --dir " + dir.path() + " --size 16MiB --block-size 1000");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("block_size"), std::string::npos) << r.output;
  r = run_command(strata_bin() + " bench io --no-fio --dir " + dir.path() + " --records 3000");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("multiple of 4 KiB"), std::string::npos) << r.output;
}

TEST(BenchIo, EnvReportsTheEnginesBackendChoice) {
  auto r = run_command(strata_bin() + " env --dir " + std::filesystem::temp_directory_path().string());
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("I/O backend      io_uring (io_uring completes"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace strata
