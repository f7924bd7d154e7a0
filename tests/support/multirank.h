// Runs a program as N real ranks, the way a launcher would, and collects each rank's
// exit code and output. Rendezvous goes through a fresh FileStore (STRATA_FILE_STORE).
//
//   auto ranks = strata::testing::run_ranks(3, {worker_bin(), "collectives"});
//   for (auto& r : ranks) EXPECT_EQ(r.exit_code, 0) << r.output;
//
// A rank that outlives the timeout is killed (exit code 128+SIGKILL), so a hang fails
// the test instead of blocking ctest.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace strata::testing {

struct RankResult {
  int rank = 0;
  int exit_code = -1;  // 128 + signal when killed
  std::string output;  // stdout and stderr
  double seconds = 0;  // wall time until exit
};

inline std::filesystem::path fresh_temp_dir(const std::string& tag) {
  std::string tmpl = (std::filesystem::temp_directory_path() / ("strata-" + tag + "-XXXXXX")).string();
  const char* dir = ::mkdtemp(tmpl.data());
  return dir != nullptr ? std::filesystem::path(dir) : std::filesystem::temp_directory_path();
}

// Rank processes, unless the environment says otherwise, run with glibc's malloc asking
// for transparent huge pages on its large blocks. LibTorch allocates its gradients and
// temporaries afresh every step, and on the VMs CI runs on each 4 KiB page fault is
// expensive: RealSize/stage2 (64 MiB records) took 72 s with 5.3M page faults, and 22 s
// with 96K faults this way. Only the speed changes; strata's own buffers advise huge
// pages themselves (Note [huge pages] in io/buffer_pool.h), and the tests of that
// advice allow for glibc's (support/smaps.h malloc_advises_huge_pages). scripts/test
// sets the same for every test process.
inline constexpr const char* kRankMallocTunables = "glibc.malloc.hugetlb=1";

inline std::vector<RankResult> run_ranks(int world, const std::vector<std::string>& argv,
                                         std::chrono::seconds timeout = std::chrono::seconds(120),
                                         const std::map<std::string, std::string>& extra_env = {}) {
  const auto dir = fresh_temp_dir("ranks");
  const std::string store = (dir / "store").string();
  std::vector<pid_t> pids(world, -1);
  std::vector<RankResult> results(world);
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < world; ++r) {
    results[r].rank = r;
    const std::string out = (dir / ("rank" + std::to_string(r) + ".log")).string();
    pid_t pid = ::fork();
    if (pid == 0) {
      int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
      ::setenv("STRATA_FILE_STORE", store.c_str(), 1);
      ::setenv("GLIBC_TUNABLES", kRankMallocTunables, /*overwrite=*/0);
      for (const auto& [k, v] : extra_env) ::setenv(k.c_str(), v.c_str(), 1);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    pids[r] = pid;
  }
  int alive = world;
  while (alive > 0) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (pid > 0) {
      for (int r = 0; r < world; ++r) {
        if (pids[r] == pid) {
          results[r].exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
          results[r].seconds = elapsed;
          pids[r] = -1;
          --alive;
        }
      }
      continue;
    }
    if (elapsed > static_cast<double>(timeout.count())) {
      for (pid_t p : pids)
        if (p > 0) ::kill(p, SIGKILL);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (int r = 0; r < world; ++r) {
    std::ifstream in(dir / ("rank" + std::to_string(r) + ".log"));
    std::stringstream ss;
    ss << in.rdbuf();
    results[r].output = ss.str();
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return results;
}

// All outputs, labelled, for failure messages.
inline std::string all_output(const std::vector<RankResult>& rs) {
  std::string s;
  for (const auto& r : rs) s += "--- rank " + std::to_string(r.rank) + " (exit " + std::to_string(r.exit_code) + ")\n" + r.output;
  return s;
}

}  // namespace strata::testing
