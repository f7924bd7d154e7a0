#include "launcher.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

namespace strata::cli {
namespace {

struct Child {
  int rank = 0;
  pid_t pid = -1;
  int out_fd = -1;      // read end of the rank's stdout+stderr pipe; -1 once closed
  std::string pending;  // bytes after the last line break
  bool exited = false;
  int code = 0;
};

void write_all(int fd, std::string_view s) {
  while (!s.empty()) {
    ssize_t n = ::write(fd, s.data(), s.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    s.remove_prefix(static_cast<std::size_t>(n));
  }
}

// Emits every complete segment ending in '\n' or '\r' with the rank prefix. A '\r'
// segment is a live progress update; it keeps its '\r' so it redraws in place.
void forward(int fd, Child& c, std::string_view data, bool flush) {
  c.pending.append(data);
  std::size_t start = 0;
  for (std::size_t i = 0; i < c.pending.size(); ++i) {
    if (c.pending[i] == '\n' || c.pending[i] == '\r') {
      write_all(fd, fmt::format("[r{}] {}", c.rank, std::string_view(c.pending).substr(start, i + 1 - start)));
      start = i + 1;
    }
  }
  c.pending.erase(0, start);
  if (flush && !c.pending.empty()) {
    write_all(fd, fmt::format("[r{}] {}\n", c.rank, c.pending));
    c.pending.clear();
  }
}

volatile sig_atomic_t g_stop_signal = 0;
void on_signal(int sig) { g_stop_signal = sig; }

}  // namespace

Result<int> pick_free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return make_error(errno_error(errno, "socket"));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int err = errno;
    ::close(fd);
    return make_error(errno_error(err, "bind to a free port"));
  }
  ::close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

std::string shell_quoted(const std::string& s) {
  std::string q = "'";
  for (char ch : s) {
    if (ch == '\'') q.append("'\\''");  // close, an escaped quote, reopen
    else q.push_back(ch);
  }
  q.push_back('\'');
  return q;
}

Status run_as_user(const std::vector<std::string>& argv, const std::string& redirect, const std::string& what) {
  std::string cmd = "env -u RANK -u WORLD_SIZE -u LOCAL_RANK -u LOCAL_WORLD_SIZE";
  for (const auto& a : argv) cmd.append(" ").append(shell_quoted(a));
  cmd.append(" ").append(redirect);
  const int status = std::system(cmd.c_str());
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code != 0) return make_error(ErrorCode::kInternal, "{} failed with exit code {}", what, code);
  return ok();
}

Result<std::string> self_exe() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return make_error(errno_error(errno, "readlink /proc/self/exe"));
  return std::string(buf, static_cast<std::size_t>(n));
}

Result<std::vector<nlohmann::json>> run_bench_ranks(const std::string& bench, int world,
                                                    const std::vector<std::string>& args) {
  STRATA_ASSIGN_OR_RETURN(std::string self, self_exe());
  std::string dir = (std::filesystem::temp_directory_path() / ("strata-bench-" + bench + "-XXXXXX")).string();
  if (::mkdtemp(dir.data()) == nullptr) return make_error(errno_error(errno, "mkdtemp").with_path(dir));
  LaunchOptions lo;
  lo.nproc = world;
  lo.output_fd = STDERR_FILENO;  // stdout is the bench's own: one JSON document with --json
  lo.argv = {self, "bench", bench, "--worker", dir};
  lo.argv.insert(lo.argv.end(), args.begin(), args.end());
  auto code = launch(lo);
  std::vector<nlohmann::json> out;
  Status st = ok();
  if (!code) st = make_error(std::move(code).error());
  else if (*code != 0) st = make_error(ErrorCode::kInternal, "bench {}: a rank failed with exit code {}", bench, *code);
  for (int r = 0; st && r < world; ++r) {
    std::ifstream in(fmt::format("{}/rank{}.json", dir, r));
    auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) st = make_error(ErrorCode::kDataLoss, "bench {}: rank {} wrote no figures", bench, r);
    else out.push_back(std::move(j));
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (!st) return make_error(std::move(st).error());
  return out;
}

Result<int> launch(const LaunchOptions& o) {
  if (o.nproc < 1) return make_error(ErrorCode::kInvalidArgument, "need at least one process, got {}", o.nproc);
  if (o.argv.empty()) return make_error(ErrorCode::kInvalidArgument, "no program to launch");
  int port = o.master_port;
  if (port == 0) {
    STRATA_ASSIGN_OR_RETURN(port, pick_free_port());
  }

  // A failed exec reports through this pipe (closed on exec), so "no such program" is
  // an error here rather than N confusing exit codes.
  std::vector<Child> kids(o.nproc);
  for (int r = 0; r < o.nproc; ++r) {
    Child& c = kids[r];
    c.rank = r;
    const bool passthrough = o.rank0_passthrough && r == 0;
    int out[2] = {-1, -1}, exec_err[2];
    if ((!passthrough && ::pipe(out) != 0) || ::pipe2(exec_err, O_CLOEXEC) != 0) {
      return make_error(errno_error(errno, "pipe"));
    }
    pid_t pid = ::fork();
    if (pid < 0) return make_error(errno_error(errno, "fork"));
    if (pid == 0) {
      // Each rank leads its own process group, so stopping a rank also stops whatever
      // it started (a shell's children, data loader helpers).
      ::setpgid(0, 0);
      ::close(exec_err[0]);
      if (!passthrough) {
        ::dup2(out[1], STDOUT_FILENO);
        ::dup2(out[1], STDERR_FILENO);
        ::close(out[0]);
        ::close(out[1]);
      }
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(o.nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(o.nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", o.master_addr.c_str(), 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::unsetenv("TORCHELASTIC_USE_AGENT_STORE");
      for (const auto& [k, v] : o.extra_env) ::setenv(k.c_str(), v.c_str(), 1);
      std::vector<char*> args;
      for (const auto& a : o.argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execvp(args[0], args.data());
      const int err = errno;
      (void)!::write(exec_err[1], &err, sizeof(err));
      ::_exit(127);
    }
    ::close(exec_err[1]);
    int err = 0;
    const bool exec_failed = ::read(exec_err[0], &err, sizeof(err)) == static_cast<ssize_t>(sizeof(err));
    ::close(exec_err[0]);
    if (!passthrough) {
      ::close(out[1]);
      c.out_fd = out[0];
      // Grandchildren may hold the pipe open after the rank exits; never block on it.
      ::fcntl(c.out_fd, F_SETFL, ::fcntl(c.out_fd, F_GETFL) | O_NONBLOCK);
    }
    ::setpgid(pid, pid);  // also here, so the group exists before we ever signal it
    c.pid = pid;
    if (exec_failed) {
      for (auto& k : kids)
        if (k.pid > 0) ::kill(k.pid, SIGKILL), ::waitpid(k.pid, nullptr, 0);
      return make_error(errno_error(err, fmt::format("cannot run {}", o.argv[0])));
    }
  }

  struct sigaction sa {}, old_int{}, old_term{};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, &old_int);
  ::sigaction(SIGTERM, &sa, &old_term);
  g_stop_signal = 0;

  int first_failure = 0, alive = o.nproc;
  bool stopping = false;
  auto stop_deadline = std::chrono::steady_clock::time_point::max();
  auto stop_all = [&](int sig) {
    for (auto& k : kids) ::kill(-k.pid, sig);  // the rank's whole process group
  };
  while (alive > 0) {
    std::vector<pollfd> fds;
    for (auto& k : kids)
      if (k.out_fd >= 0) fds.push_back({k.out_fd, POLLIN, 0});
    ::poll(fds.data(), fds.size(), 100);
    for (auto& k : kids) {
      if (k.out_fd < 0) continue;
      pollfd p{k.out_fd, POLLIN, 0};
      if (::poll(&p, 1, 0) <= 0) continue;
      char buf[65536];
      ssize_t n = ::read(k.out_fd, buf, sizeof(buf));
      if (n > 0) {
        forward(o.output_fd, k, std::string_view(buf, static_cast<std::size_t>(n)), false);
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        forward(o.output_fd, k, {}, true);
        ::close(k.out_fd);
        k.out_fd = -1;
      }
    }
    int status = 0;
    for (pid_t pid; (pid = ::waitpid(-1, &status, WNOHANG)) > 0;) {
      for (auto& k : kids) {
        if (k.pid != pid) continue;
        k.exited = true;
        k.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        --alive;
        if (k.code == 0) ::kill(-k.pid, SIGKILL);  // leftovers of a finished rank
        if (k.code != 0 && first_failure == 0 && !stopping) {
          first_failure = k.code;
          write_all(STDERR_FILENO, fmt::format("strata launch: rank {} exited with code {}; stopping the other ranks\n",
                                               k.rank, k.code));
          stopping = true;
          stop_all(SIGTERM);
          stop_deadline = std::chrono::steady_clock::now() + o.grace;
        }
      }
    }
    if (g_stop_signal != 0 && !stopping) {
      stopping = true;
      first_failure = 128 + g_stop_signal;
      stop_all(SIGTERM);
      stop_deadline = std::chrono::steady_clock::now() + o.grace;
    }
    if (stopping && std::chrono::steady_clock::now() > stop_deadline) {
      stop_all(SIGKILL);
      stop_deadline = std::chrono::steady_clock::time_point::max();
    }
  }
  // Drain what the ranks wrote before exiting.
  for (auto& k : kids) {
    if (k.out_fd < 0) continue;
    char buf[65536];
    for (ssize_t n; (n = ::read(k.out_fd, buf, sizeof(buf))) > 0;) forward(o.output_fd, k, std::string_view(buf, n), false);
    forward(o.output_fd, k, {}, true);
    ::close(k.out_fd);
  }
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  return first_failure;
}

}  // namespace strata::cli
