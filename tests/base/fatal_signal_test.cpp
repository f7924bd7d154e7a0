// install_fatal_signal_report (Note [fatal signal report]): each case runs in a forked
// child whose stderr is a pipe, and checks what the child wrote and what it died of.
#include "strata/base/fatal_signal.h"

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>

#include <gtest/gtest.h>

namespace strata {
namespace {

struct Death {
  int signal = 0;  // what the child died of, 0 when it exited
  int exit_code = -1;
  std::string err;  // its stderr
};

// Runs `body` in a child with the report installed (by `body` itself when `install` is
// false). The sanitizers install handlers of their own, which would run after the
// report, so the child puts the defaults back first. `before_kill`, when given, runs in
// the parent once the child is ready, with the child's pid.
Death run_child(const std::function<void()>& body, const std::function<void(pid_t)>& before_kill = {},
                bool install = true) {
  int err[2], ready[2];
  EXPECT_EQ(::pipe(err), 0);
  EXPECT_EQ(::pipe(ready), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(err[1], STDERR_FILENO);
    ::close(err[0]);
    ::close(ready[0]);
    for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) ::signal(sig, SIG_DFL);
    if (install) install_fatal_signal_report("child");
    (void)!::write(ready[1], "r", 1);
    body();
    std::_Exit(0);
  }
  ::close(err[1]);
  ::close(ready[1]);
  char c;
  (void)!::read(ready[0], &c, 1);
  ::close(ready[0]);
  if (before_kill) before_kill(pid);
  Death d;
  char buf[4096];
  for (ssize_t n; (n = ::read(err[0], buf, sizeof buf)) > 0;) d.err.append(buf, static_cast<std::size_t>(n));
  ::close(err[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (WIFSIGNALED(status)) d.signal = WTERMSIG(status);
  if (WIFEXITED(status)) d.exit_code = WEXITSTATUS(status);
  return d;
}

// An address nothing is mapped at, made at run time: a constant one draws the compiler's
// bounds warnings, and null would be reported by UBSan before the fault.
void write_to_unmapped(std::uintptr_t at) {
  volatile std::uintptr_t a = at;
  *reinterpret_cast<volatile int*>(a) = 1;
}

std::size_t backtrace_lines(const std::string& err) {
  const auto head = err.find("backtrace");
  std::size_t n = 0;
  for (auto at = err.find('\n', head); head != std::string::npos && at != std::string::npos; at = err.find('\n', at + 1))
    n += at + 1 < err.size();
  return n;
}

TEST(FatalSignalReport, AFaultNamesItsAddressAndThreadThenDiesOfIt) {
  const Death d = run_child([] { write_to_unmapped(0x10); });
  EXPECT_EQ(d.signal, SIGSEGV) << d.err;
  EXPECT_NE(d.err.find("child: fatal signal SIGSEGV (address not mapped) at 0x10, thread "), std::string::npos) << d.err;
  EXPECT_NE(d.err.find(" of process "), std::string::npos) << d.err;
  // A few frames at least: the handler's, the faulting function's, main's.
  EXPECT_GE(backtrace_lines(d.err), 3u) << d.err;
  EXPECT_NE(d.err.find("test_base"), std::string::npos) << d.err;  // frames name their module
}

TEST(FatalSignalReport, ASignalFromAnotherProcessNamesTheSender) {
  const Death d = run_child([] { ::pause(); }, [](pid_t child) { ::kill(child, SIGSEGV); });
  EXPECT_EQ(d.signal, SIGSEGV) << d.err;
  EXPECT_NE(d.err.find("child: fatal signal SIGSEGV (sent by process " + std::to_string(::getpid()) + ", uid "),
            std::string::npos)
      << d.err;
}

TEST(FatalSignalReport, AbortIsReportedAsTheProcessOwn) {
  const Death d = run_child([] { std::abort(); });
  EXPECT_EQ(d.signal, SIGABRT) << d.err;
  EXPECT_NE(d.err.find("child: fatal signal SIGABRT (raised by this process"), std::string::npos) << d.err;
}

TEST(FatalSignalReport, AFaultOnAnotherThreadNamesThatThread) {
  const Death d = run_child([] {
    std::thread([] {
      ::pthread_setname_np(::pthread_self(), "faulty-worker");
      write_to_unmapped(0x20);
    }).join();
  });
  EXPECT_EQ(d.signal, SIGSEGV) << d.err;
  EXPECT_NE(d.err.find("\"faulty-worker\""), std::string::npos) << d.err;
}

// Recursion without end overflows the stack; the report still runs, on its own stack.
volatile int g_depth_limit = -1;  // never reached: the compiler cannot know that
int deeper(int n) {
  volatile char pad[4096];
  pad[0] = static_cast<char>(n);
  return n == g_depth_limit ? 0 : deeper(n + 1) + pad[0];
}

TEST(FatalSignalReport, AStackOverflowIsStillReported) {
  const Death d = run_child([] { (void)deeper(1); });
  EXPECT_EQ(d.signal, SIGSEGV) << d.err;
  EXPECT_NE(d.err.find("child: fatal signal SIGSEGV ("), std::string::npos) << d.err;
}

// A handler that was there first (a sanitizer's, Python's faulthandler, a library's)
// runs after the report, with the signal's details, and what it does stands: this one
// exits 42 with the si_code it was given.
TEST(FatalSignalReport, AnEarlierHandlerRunsAfterTheReport) {
  const Death d = run_child(
      [] {
        struct sigaction own {};
        own.sa_sigaction = [](int, siginfo_t* info, void*) {
          std::_Exit(info->si_code == SEGV_MAPERR && info->si_addr == reinterpret_cast<void*>(0x30) ? 42 : 43);
        };
        own.sa_flags = SA_SIGINFO;
        ::sigemptyset(&own.sa_mask);
        ::sigaction(SIGSEGV, &own, nullptr);
        install_fatal_signal_report("child");
        write_to_unmapped(0x30);
      },
      {}, /*install=*/false);
  EXPECT_EQ(d.exit_code, 42) << d.err;
  EXPECT_NE(d.err.find("child: fatal signal SIGSEGV (address not mapped) at 0x30"), std::string::npos) << d.err;
}

// A second install changes nothing: one report, then the default action.
TEST(FatalSignalReport, InstallingTwiceReportsOnce) {
  const Death d = run_child([] {
    install_fatal_signal_report("child");
    write_to_unmapped(0x40);
  });
  EXPECT_EQ(d.signal, SIGSEGV) << d.err;
  const auto first = d.err.find("fatal signal");
  ASSERT_NE(first, std::string::npos) << d.err;
  EXPECT_EQ(d.err.find("fatal signal", first + 1), std::string::npos) << d.err;
}

}  // namespace
}  // namespace strata
