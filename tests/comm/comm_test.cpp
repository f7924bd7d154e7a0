// Communicator tests over real processes (Gloo, FileStore rendezvous).
#include <gtest/gtest.h>

#include "support/multirank.h"

namespace strata {
namespace {

using testing::all_output;
using testing::run_ranks;

std::string worker() { return std::string(STRATA_TEST_BIN_DIR) + "/comm_worker"; }

class CommWorld : public ::testing::TestWithParam<int> {};

TEST_P(CommWorld, CollectivesMatchLocalReferenceForEveryDtype) {
  auto rs = run_ranks(GetParam(), {worker(), "collectives"});
  for (const auto& r : rs) EXPECT_EQ(r.exit_code, 0) << all_output(rs);
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, CommWorld, ::testing::Values(1, 2, 3, 4));

TEST(CommFailures, KilledPeerIsAnErrorNotAHang) {
  // Rank 2 dies mid-run; the others must report a peer failure or timeout well
  // within the 5 s collective timeout.
  auto rs = run_ranks(3, {worker(), "kill", "5000"}, std::chrono::seconds(60));
  EXPECT_EQ(rs[2].exit_code, 128 + SIGKILL);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(rs[r].exit_code, 3) << all_output(rs);
    EXPECT_NE(rs[r].output.find("all_reduce of 256.0 KiB failed"), std::string::npos) << all_output(rs);
    EXPECT_NE(rs[r].output.find("rank=" + std::to_string(r)), std::string::npos) << all_output(rs);
    EXPECT_LT(rs[r].seconds, 20.0) << all_output(rs);
  }
}

// A rank whose peer died used to be killed by SIGPIPE (exit 141) when Gloo wrote to the
// dead connection, instead of reporting the failure (seen in KilledPeerIsAnErrorNotAHang).
TEST(CommFailures, WriteToADeadPeerIsAnErrorNotASignal) {
  auto rs = run_ranks(1, {worker(), "closed_socket"}, std::chrono::seconds(60));
  EXPECT_EQ(rs[0].exit_code, 0) << all_output(rs);
  EXPECT_NE(rs[0].output.find("OK"), std::string::npos) << all_output(rs);
}

TEST(CommFailures, SilentPeerTimesOut) {
  auto rs = run_ranks(2, {worker(), "hang", "2000"}, std::chrono::seconds(60));
  EXPECT_EQ(rs[0].exit_code, 3) << all_output(rs);
  EXPECT_NE(rs[0].output.find("timeout: all_reduce"), std::string::npos) << all_output(rs);
  EXPECT_NE(rs[0].output.find("timed out after 2000 ms"), std::string::npos) << all_output(rs);
  EXPECT_LT(rs[0].seconds, 15.0) << all_output(rs);
}

TEST(CommFailures, DivergentOrderIsCaughtByTheSequenceCheck) {
  auto rs = run_ranks(3, {worker(), "diverge", "10000"}, std::chrono::seconds(60));
  for (const auto& r : rs) {
    EXPECT_EQ(r.exit_code, 3) << all_output(rs);
    EXPECT_NE(r.output.find("collective order diverged at #1"), std::string::npos) << all_output(rs);
  }
  EXPECT_NE(rs[1].output.find("rank 1 issued broadcast(16 x Float) but rank 0 issued all_reduce(16 x Float)"),
            std::string::npos) << all_output(rs);
}

}  // namespace
}  // namespace strata
