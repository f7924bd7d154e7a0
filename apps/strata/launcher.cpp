#include "launcher.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

namespace strata::cli {
namespace {

// One of a rank's two output streams, read from a pipe: stdout goes to the launcher's
// output_fd, stderr to its stderr, each line prefixed "[r<k>] ".
struct Stream {
  int fd = -1;          // read end of the pipe; -1 once closed (or passed through)
  int to = -1;          // where its lines go
  bool prefix = true;   // false: rank 0's stderr when its stdout is passed through
  std::string pending;  // bytes after the last line break
  std::string last;     // the last non-empty line (stderr: the rank's last error)
};

struct Child {
  int rank = 0;
  pid_t pid = -1;
  Stream out, err;
  bool exited = false;
  int code = 0;
  int signal = 0;  // the signal that ended it, or 0
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
void forward(Stream& s, int rank, std::string_view data, bool flush) {
  s.pending.append(data);
  const std::string prefix = s.prefix ? fmt::format("[r{}] ", rank) : std::string();
  auto emit = [&](std::string_view seg, std::string_view end) {
    write_all(s.to, fmt::format("{}{}{}", prefix, seg, end));
    std::string_view text = seg;
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.remove_suffix(1);
    if (!text.empty()) s.last = std::string(text);
  };
  std::size_t start = 0;
  for (std::size_t i = 0; i < s.pending.size(); ++i) {
    if (s.pending[i] == '\n' || s.pending[i] == '\r') {
      emit(std::string_view(s.pending).substr(start, i + 1 - start), "");
      start = i + 1;
    }
  }
  s.pending.erase(0, start);
  if (flush && !s.pending.empty()) {
    emit(s.pending, "\n");
    s.pending.clear();
  }
}

// Reads what is in the pipe now (it is non-blocking); closes it at end of file.
void drain(Stream& s, int rank) {
  if (s.fd < 0) return;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(s.fd, buf, sizeof(buf));
    if (n > 0) {
      forward(s, rank, std::string_view(buf, static_cast<std::size_t>(n)), false);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n == 0 || errno != EAGAIN) {
      forward(s, rank, {}, true);
      ::close(s.fd);
      s.fd = -1;
    }
    return;
  }
}

// What ended a rank, for the failure report: its last line on stderr when it exited
// with an error, else how it ended.
std::string cause(const Child& c) {
  if (c.signal != 0) return fmt::format("killed by signal {} ({})", c.signal, ::strsignal(c.signal));
  if (!c.err.last.empty()) return fmt::format("exit code {}: {}", c.code, c.err.last);
  return fmt::format("exit code {}", c.code);
}

volatile sig_atomic_t g_stop_signal = 0;
volatile sig_atomic_t g_signal_count = 0;
void on_signal(int sig) {
  g_stop_signal = sig;
  g_signal_count = g_signal_count + 1;
}

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
  const pid_t launcher_pid = ::getpid();
  std::vector<Child> kids(o.nproc);
  for (int r = 0; r < o.nproc; ++r) {
    Child& c = kids[r];
    c.rank = r;
    const bool passthrough = o.rank0_passthrough && r == 0;
    int out[2] = {-1, -1}, err[2] = {-1, -1}, exec_err[2];
    if ((!passthrough && ::pipe(out) != 0) || ::pipe(err) != 0 || ::pipe2(exec_err, O_CLOEXEC) != 0) {
      return make_error(errno_error(errno, "pipe"));
    }
    pid_t pid = ::fork();
    if (pid < 0) return make_error(errno_error(errno, "fork"));
    if (pid == 0) {
      // Each rank leads its own process group, so stopping a rank also stops whatever
      // it started (a shell's children, data loader helpers).
      ::setpgid(0, 0);
      // A rank dies with its launcher, however the launcher dies (kept across exec).
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != launcher_pid) ::_exit(128 + SIGKILL);
      ::close(exec_err[0]);
      if (!passthrough) {
        ::dup2(out[1], STDOUT_FILENO);
        ::close(out[0]);
        ::close(out[1]);
      }
      ::dup2(err[1], STDERR_FILENO);
      ::close(err[0]);
      ::close(err[1]);
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
      const int e = errno;
      (void)!::write(exec_err[1], &e, sizeof(e));
      ::_exit(127);
    }
    ::close(exec_err[1]);
    int exec_errno = 0;
    const bool exec_failed = ::read(exec_err[0], &exec_errno, sizeof(exec_errno)) == static_cast<ssize_t>(sizeof(exec_errno));
    ::close(exec_err[0]);
    // Grandchildren may hold a pipe open after the rank exits; never block on one.
    auto take = [](Stream& st, int fds[2], int to, bool prefix) {
      ::close(fds[1]);
      st.fd = fds[0];
      st.to = to;
      st.prefix = prefix;
      ::fcntl(st.fd, F_SETFL, ::fcntl(st.fd, F_GETFL) | O_NONBLOCK);
    };
    if (!passthrough) take(c.out, out, o.output_fd, true);
    take(c.err, err, STDERR_FILENO, !passthrough);
    ::setpgid(pid, pid);  // also here, so the group exists before we ever signal it
    c.pid = pid;
    if (exec_failed) {
      for (auto& k : kids)
        if (k.pid > 0) ::kill(k.pid, SIGKILL), ::waitpid(k.pid, nullptr, 0);
      return make_error(errno_error(exec_errno, fmt::format("cannot run {}", o.argv[0])));
    }
  }

  struct sigaction sa {}, old_int{}, old_term{};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, &old_int);
  ::sigaction(SIGTERM, &sa, &old_term);
  g_stop_signal = 0;
  g_signal_count = 0;

  // Note [first failure]: the rank whose failure is seen first is named at once, and
  // the others are stopped. Most later failures are its consequences (a peer gone, a
  // collective timed out), but exit order is not cause order, so the report at the end
  // names as the cause the first failure that is not merely a lost peer, then the rest.
  int first_failure = 0, alive = o.nproc;
  std::vector<int> failed;  // ranks, in the order their failures were seen
  bool stopping = false, interrupted = false, killed = false;
  auto stop_deadline = std::chrono::steady_clock::time_point::max();
  auto stop_all = [&](int sig) {
    for (auto& k : kids) {
      if (k.exited) continue;
      ::kill(-k.pid, sig);  // the rank's whole process group
      // A stopped (hung, SIGSTOPped) rank acts on SIGTERM only once continued: it then
      // fails on its dead peer and shuts down cleanly, instead of waiting for SIGKILL.
      if (sig == SIGTERM) ::kill(-k.pid, SIGCONT);
    }
  };
  while (alive > 0) {
    std::vector<pollfd> fds;
    for (auto& k : kids)
      for (Stream* st : {&k.out, &k.err})
        if (st->fd >= 0) fds.push_back({st->fd, POLLIN, 0});
    ::poll(fds.data(), fds.size(), 100);
    for (auto& k : kids) drain(k.out, k.rank), drain(k.err, k.rank);
    int status = 0;
    for (pid_t pid; (pid = ::waitpid(-1, &status, WNOHANG)) > 0;) {
      for (auto& k : kids) {
        if (k.pid != pid) continue;
        k.exited = true;
        k.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
        k.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + k.signal;
        --alive;
        drain(k.out, k.rank), drain(k.err, k.rank);  // its last words, before the report
        if (k.code == 0) ::kill(-k.pid, SIGKILL);     // leftovers of a finished rank
        if (k.code == 0 || interrupted) continue;
        // Ended by our own stop signal: a consequence that needs no line of its own.
        const bool stopped_by_us = stopping && (k.signal == SIGTERM || k.signal == SIGKILL || k.code == 128 + SIGTERM);
        if (stopped_by_us) continue;
        failed.push_back(k.rank);
        if (first_failure == 0 && !stopping) {
          first_failure = k.code;
          write_all(STDERR_FILENO, fmt::format("strata launch: rank {} failed ({}); stopping the other ranks\n",
                                               k.rank, cause(k)));
          stopping = true;
          stop_all(SIGTERM);
          stop_deadline = std::chrono::steady_clock::now() + o.grace;
        }
      }
    }
    // The first Ctrl-C or SIGTERM is passed on: ranks stop at the end of their step and
    // clean up. A second one kills them at once.
    if (g_signal_count >= 1 && !interrupted && !stopping) {
      interrupted = stopping = true;
      first_failure = 128 + g_stop_signal;
      stop_all(SIGTERM);
    }
    if (g_signal_count >= 2 && !killed) {
      killed = true;
      write_all(STDERR_FILENO, "strata launch: interrupted again; killing the ranks\n");
      stop_all(SIGKILL);
    }
    if (stopping && std::chrono::steady_clock::now() > stop_deadline) {
      stop_all(SIGKILL);
      stop_deadline = std::chrono::steady_clock::time_point::max();
    }
  }
  // Drain what the ranks (or processes they left behind) wrote before exiting.
  for (auto& k : kids) {
    drain(k.out, k.rank), drain(k.err, k.rank);
    for (Stream* st : {&k.out, &k.err}) {
      if (st->fd < 0) continue;
      forward(*st, k.rank, {}, true);
      ::close(st->fd);
    }
  }
  if (!failed.empty() && o.nproc > 1) {
    // The order of exits is not the order of causes: a rank that hit a disk error may
    // take longer to shut down than its peer takes to notice it is gone. A failure that
    // reports only a lost peer is a consequence; the first other one is the cause.
    // Reported also when the others all ended by our stop signal: whether a woken peer
    // fails on its own first or takes the SIGTERM is a race, and the report must not
    // depend on it.
    auto consequence = [&](int r) { return cause(kids[r]).find("peer failure") != std::string::npos; };
    auto first = std::find_if(failed.begin(), failed.end(), [&](int r) { return !consequence(r); });
    if (first == failed.end()) first = failed.begin();
    std::rotate(failed.begin(), first, first + 1);
    first_failure = kids[failed[0]].code;
    std::string report = fmt::format("strata launch: the cause: rank {} ({})\n", failed[0], cause(kids[failed[0]]));
    for (std::size_t i = 1; i < failed.size(); ++i)
      report += fmt::format("strata launch:   then rank {} ({})\n", failed[i], cause(kids[failed[i]]));
    write_all(STDERR_FILENO, report);
  }
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  return first_failure;
}

}  // namespace strata::cli
