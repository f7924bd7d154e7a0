// A command started in the background, in its own session (so a signal sent to it
// reaches it alone, as Ctrl-C reaches a foreground launcher), with stdout and stderr in
// files the test can poll.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace strata::testing {

inline std::string slurp_file(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class Background {
 public:
  Background(const std::string& cmd, const std::filesystem::path& dir)
      : out_(dir / "stdout.txt"), err_(dir / "stderr.txt") {
    pid_ = ::fork();
    if (pid_ == 0) {
      ::setsid();
      const std::string full = cmd + " >" + out_.string() + " 2>" + err_.string() + " </dev/null";
      ::execl("/bin/sh", "sh", "-c", ("exec " + full).c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
  }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;
  ~Background() {
    if (pid_ > 0 && !status_) {
      ::kill(-pid_, SIGKILL);
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  pid_t pid() const { return pid_; }
  std::string out() const { return slurp(out_); }
  std::string err() const { return slurp(err_); }

  // Polls stdout (or stderr) until it holds `text`; false on timeout or exit.
  bool wait_for(const std::string& text, std::chrono::seconds timeout, bool in_stderr = false) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if ((in_stderr ? err() : out()).find(text) != std::string::npos) return true;
      if (exited()) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  // The exit code (128+signal when killed), or nullopt if still running at the timeout.
  std::optional<int> wait_exit(std::chrono::seconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (!exited() && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    return status_;
  }

  // Whether it has ended (reaps it then); does not wait.
  bool exited() {
    if (status_) return true;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return status_.has_value();
  }

 private:
  static std::string slurp(const std::filesystem::path& p) { return slurp_file(p); }

  std::filesystem::path out_, err_;
  pid_t pid_ = -1;
  std::optional<int> status_;
};

// Regular files under `dir`, recursively (swap files, locks a run left behind).
inline std::vector<std::string> files_under(const std::filesystem::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec))
    if (it->is_regular_file(ec)) out.push_back(it->path().string());
  return out;
}

// Live processes (not zombies) whose command line contains `needle`, this one excluded;
// with `kill_them`, each is sent SIGKILL (a failed test's orphans must not run on).
inline int processes_matching(const std::string& needle, bool kill_them = false) {
  int n = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos || name == std::to_string(::getpid())) continue;
    std::string cmdline = slurp_file(e.path() / "cmdline"), stat = slurp_file(e.path() / "stat");
    for (char& c : cmdline)
      if (c == '\0') c = ' ';
    const auto close = stat.rfind(')');
    const bool zombie = close != std::string::npos && close + 2 < stat.size() && stat[close + 2] == 'Z';
    if (!zombie && cmdline.find(needle) != std::string::npos) {
      ++n;
      if (kill_them) ::kill(std::stoi(name), SIGKILL);
    }
  }
  return n;
}

}  // namespace strata::testing
