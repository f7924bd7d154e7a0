#include "strata/base/fatal_signal.h"

#include <errno.h>
#include <execinfo.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace strata {
namespace {

// Everything the handler calls is async-signal-safe: write, raise, sigaction, prctl,
// nanosleep, gettid, and backtrace/backtrace_symbols_fd once the unwinder is loaded
// (install does that; loading it would malloc).
constexpr int kFatalSignals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
const char* g_program = "strata";
std::atomic<long> g_reporter{0};  // the reporting thread's id; 0 while none is
// The handler each signal had before ours (Note [fatal signal report]: it runs after the
// report); sa_handler SIG_DFL where there was none. Written by install only.
struct sigaction g_previous[NSIG];
alignas(16) char g_alt_stack[64 << 10];

// One line in a fixed buffer: no allocation, no stdio, no locale.
class Line {
 public:
  Line& str(const char* s) {
    while (*s != '\0' && n_ < sizeof(buf_) - 1) buf_[n_++] = *s++;
    return *this;
  }
  Line& dec(long long v) {
    if (v < 0) {
      str("-");
      v = -v;
    }
    return digits(static_cast<unsigned long long>(v), 10);
  }
  Line& hex(std::uintptr_t v) { return str("0x").digits(v, 16); }
  // Writes the line and a newline, retrying short and interrupted writes.
  void write() {
    buf_[n_++] = '\n';
    for (std::size_t done = 0; done < n_;) {
      const ssize_t w = ::write(STDERR_FILENO, buf_ + done, n_ - done);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return;
      done += static_cast<std::size_t>(w);
    }
  }

 private:
  Line& digits(unsigned long long v, unsigned base) {
    char tmp[24];
    int k = 0;
    do {
      tmp[k++] = "0123456789abcdef"[v % base];
      v /= base;
    } while (v != 0);
    while (k > 0 && n_ < sizeof(buf_) - 1) buf_[n_++] = tmp[--k];
    return *this;
  }
  char buf_[512];
  std::size_t n_ = 0;
};

const char* signal_name(int sig) {
  switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGILL: return "SIGILL";
    case SIGFPE: return "SIGFPE";
    case SIGABRT: return "SIGABRT";
    default: return "signal";
  }
}

// What a kernel-raised fault's si_code says (si_code > 0).
const char* fault_kind(int sig, int code) {
  switch (sig) {
    case SIGSEGV: return code == SEGV_MAPERR ? "address not mapped" : code == SEGV_ACCERR ? "access not permitted" : "segmentation fault";
    case SIGBUS: return code == BUS_ADRALN ? "misaligned address" : code == BUS_ADRERR ? "no such physical address" : "bus error";
    case SIGILL: return code == ILL_ILLOPC ? "illegal opcode" : code == ILL_PRVOPC ? "privileged opcode" : "illegal instruction";
    case SIGFPE: return code == FPE_INTDIV ? "integer divide by zero" : code == FPE_INTOVF ? "integer overflow" : "arithmetic fault";
    default: return "fault";
  }
}

long thread_id() { return ::syscall(SYS_gettid); }

void report(int sig, const siginfo_t* info, long tid) {
  Line line;
  line.str(g_program).str(": fatal signal ").str(signal_name(sig)).str(" (");
  const int code = info != nullptr ? info->si_code : SI_USER;
  if (info != nullptr && code == SI_KERNEL) {
    // x86 reports a general protection fault (a non-canonical address, for one) this way,
    // with no address.
    line.str("raised by the kernel, no address)");
  } else if (info != nullptr && code > 0) {
    line.str(fault_kind(sig, code)).str(") at ").hex(reinterpret_cast<std::uintptr_t>(info->si_addr));
  } else if (info != nullptr && info->si_pid == ::getpid()) {
    line.str("raised by this process: abort(), a failed assertion, std::terminate or raise())");
  } else if (info != nullptr) {
    line.str("sent by process ").dec(info->si_pid).str(", uid ").dec(info->si_uid).str(")");
  } else {
    line.str("no details)");
  }
  char name[17] = {};
  (void)::prctl(PR_GET_NAME, name, 0, 0, 0);
  line.str(", thread ").dec(tid).str(" \"").str(name).str("\" of process ").dec(::getpid());
  line.write();
  Line head;
  head.str(g_program).str(": backtrace (symbolize with addr2line -Cfe MODULE OFFSET):").write();
  void* frames[64];
  const int n = ::backtrace(frames, 64);
  ::backtrace_symbols_fd(frames, n, STDERR_FILENO);
}

// Dies of `sig` with its default action. The signal is blocked while its handler runs,
// so the raise is delivered as the handler returns; a fault's instruction would only
// fault again.
void die_of(int sig) {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  ::sigemptyset(&dfl.sa_mask);
  ::sigaction(sig, &dfl, nullptr);
  ::raise(sig);
}

bool has_handler(const struct sigaction& a) {
  return (a.sa_flags & SA_SIGINFO) != 0 || (a.sa_handler != SIG_DFL && a.sa_handler != SIG_IGN);
}

// After the report: the handler that was there before ours, put back and called with
// the same arguments, so it sees the fault as it happened; if it returns, so do we, and
// what follows is as it would have been without us. With none, the default action.
void pass_on(int sig, siginfo_t* info, void* context) {
  const struct sigaction prev = g_previous[sig];
  if (!has_handler(prev)) {
    die_of(sig);
    return;
  }
  ::sigaction(sig, &prev, nullptr);
  if ((prev.sa_flags & SA_SIGINFO) != 0) prev.sa_sigaction(sig, info, context);
  else prev.sa_handler(sig);
}

void on_fatal(int sig, siginfo_t* info, void* context) {
  const int saved_errno = errno;  // a handler that returns leaves errno as it found it
  const long tid = thread_id();
  long none = 0;
  if (!g_reporter.compare_exchange_strong(none, tid)) {
    // A fault inside this thread's own report: no second try. Another thread's report:
    // let it finish (the process most likely dies with it), then go on without one.
    if (none != tid) {
      const timespec pause{0, 10'000'000};
      for (int i = 0; i < 300 && g_reporter.load() != 0; ++i) ::nanosleep(&pause, nullptr);
    }
    pass_on(sig, info, context);
    errno = saved_errno;
    return;
  }
  report(sig, info, tid);
  g_reporter.store(0);
  pass_on(sig, info, context);
  errno = saved_errno;
}

// An alternate stack for the calling thread, unless it has one: a stack overflow's
// SIGSEGV can then still run the report.
void use_alt_stack() {
  stack_t old{};
  if (::sigaltstack(nullptr, &old) != 0 || (old.ss_flags & SS_DISABLE) == 0) return;
  stack_t st{};
  st.ss_sp = g_alt_stack;
  st.ss_size = sizeof(g_alt_stack);
  (void)::sigaltstack(&st, nullptr);
}

}  // namespace

void install_fatal_signal_report(const char* program) {
  g_program = program;
  void* warm[2];
  (void)::backtrace(warm, 2);  // loads the unwinder now, not in a handler, where it would malloc
  use_alt_stack();
  for (const int sig : kFatalSignals) {
    struct sigaction old {};
    if (::sigaction(sig, nullptr, &old) != 0) continue;
    if ((old.sa_flags & SA_SIGINFO) != 0 && old.sa_sigaction == on_fatal) continue;  // installed already
    if ((old.sa_flags & SA_SIGINFO) == 0 && old.sa_handler == SIG_IGN) continue;   // ignored on purpose
    g_previous[sig] = old;
    struct sigaction sa {};
    sa.sa_sigaction = on_fatal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    ::sigemptyset(&sa.sa_mask);
    ::sigaction(sig, &sa, nullptr);
  }
}

}  // namespace strata
