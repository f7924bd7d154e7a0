// Starts N local ranks of a program, the way torchrun does on one machine.
//
//   LaunchOptions opts{.nproc = 4, .argv = {"./train", "--steps", "100"}};
//   int code = launch(opts);   // 0, or the exit code of the first rank that failed
//
// Each rank gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and
// MASTER_PORT (a free port), so strata::comm::init_from_env() works unchanged. A rank's
// stdout goes to output_fd and its stderr to stderr, each line prefixed "[r<k>] ".
// Ranks die with the launcher (a parent-death signal), however it dies.
//
// When a rank fails, the launcher names it and its last stderr line on stderr, sends
// the others SIGTERM, then SIGKILL after a grace period, lists the later failures, and
// returns the first failure's code (128+signal for a rank killed by a signal). A first
// SIGINT or SIGTERM is passed on to the ranks as SIGTERM (strata train stops at the end
// of its step and cleans up); a second kills them at once.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "strata/base/status.h"

namespace strata::cli {

struct LaunchOptions {
  int nproc = 1;
  std::vector<std::string> argv;  // program (looked up in PATH) and its arguments
  std::string master_addr = "127.0.0.1";
  int master_port = 0;  // 0 = pick a free port
  // Rank 0 writes straight to this process's stdout, and its stderr lines are passed on
  // unprefixed, so that a live progress line keeps working on a terminal. Other ranks
  // stay prefixed.
  bool rank0_passthrough = false;
  // Where the ranks' stdout goes (benchmarks: stderr, so that stdout holds only their
  // own report). Their stderr always goes to stderr.
  int output_fd = 1;
  std::chrono::milliseconds grace{5000};
  std::map<std::string, std::string> extra_env;
};

// Runs the ranks to completion. An error only for failures to start (bad program,
// no free port); a rank's own failure is its exit code.
Result<int> launch(const LaunchOptions& options);

// A TCP port on 127.0.0.1 that was free a moment ago.
Result<int> pick_free_port();

// The path of the running executable, to start ranks of this very program.
Result<std::string> self_exe();

// A shell word: `s` in single quotes, safe for std::system.
std::string shell_quoted(const std::string& s);

// Runs argv through the shell as a user starts it (no RANK or WORLD_SIZE in its
// environment, so a strata command starts its own ranks), with `redirect` appended
// (e.g. "1>&2"); a non-zero exit is an error naming `what`.
Status run_as_user(const std::vector<std::string>& argv, const std::string& redirect, const std::string& what);

// Starts `world` ranks of `strata bench <bench> --worker DIR <args>`, each of which
// writes DIR/rank<k>.json, and returns those objects in rank order.
Result<std::vector<nlohmann::json>> run_bench_ranks(const std::string& bench, int world,
                                                    const std::vector<std::string>& args);

}  // namespace strata::cli
