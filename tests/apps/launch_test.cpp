// strata launch and torchrun, starting real ranks that rendezvous through comm::init_from_env.
#include <chrono>

#include <fmt/format.h>

#include <gtest/gtest.h>

#include "support/subprocess.h"

namespace strata {
namespace {

using testing::run_command;
using testing::strata_bin;
using testing::torchrun_prefix;

std::string worker() { return std::string(STRATA_TEST_BIN_DIR) + "/comm_worker"; }

TEST(Launch, SetsRankEnvironmentAndPrefixesOutput) {
  auto r = run_command(strata_bin() + " launch -n 3 -- sh -c 'echo \"rank $RANK/$LOCAL_RANK of $WORLD_SIZE at $MASTER_ADDR\"'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (int k = 0; k < 3; ++k) {
    EXPECT_NE(r.output.find(fmt::format("[r{}] rank {}/{} of 3 at 127.0.0.1", k, k, k)), std::string::npos) << r.output;
  }
}

TEST(Launch, FirstFailureStopsTheOthersAndSetsExitCode) {
  const auto t0 = std::chrono::steady_clock::now();
  auto r = run_command(strata_bin() + " launch -n 3 -- sh -c 'if [ $RANK = 1 ]; then exit 7; fi; sleep 60'");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.exit_code, 7) << r.output;
  EXPECT_NE(r.output.find("rank 1 failed (exit code 7); stopping the other ranks"), std::string::npos) << r.output;
  EXPECT_LT(s, 20.0) << "the sleeping ranks were not stopped";
}

TEST(Launch, MissingProgramIsAClearError) {
  auto r = run_command(strata_bin() + " launch -n 2 -- /nonexistent/program");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("cannot run /nonexistent/program: No such file or directory"), std::string::npos) << r.output;
}

TEST(Launch, RanksRendezvousOverTheTcpStore) {
  auto r = run_command(strata_bin() + " launch -n 3 -- " + worker() + " collectives");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (int k = 0; k < 3; ++k) EXPECT_NE(r.output.find(fmt::format("[r{}] OK", k)), std::string::npos) << r.output;
}

// torchrun's static rendezvous: the agent hosts the store (TORCHELASTIC_USE_AGENT_STORE).
TEST(Launch, TorchrunStaticMode) {
  auto r = run_command(torchrun_prefix(2) + worker() + " collectives");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("[default1]:OK"), std::string::npos) << r.output;
}

TEST(Launch, TorchrunStandaloneMode) {
  auto r = run_command("torchrun --standalone --nproc_per_node 2 --redirects 1 --tee 1 --no_python " + worker() +
                       " collectives");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("[default1]:OK"), std::string::npos) << r.output;
}

// The ZeRO-2 example from docs/distributed.md trains to a low loss on two ranks.
TEST(Launch, Zero2ExampleTrains) {
  auto r = run_command(strata_bin() + " launch -n 2 -- " + std::string(STRATA_TEST_BIN_DIR) + "/example_zero2_mlp");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("[r1] rank 1: loss"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace strata
