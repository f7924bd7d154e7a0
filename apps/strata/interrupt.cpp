#include "interrupt.h"

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

namespace strata::cli {
namespace {

// Note [who asked to stop]: one Ctrl-C can reach a rank twice. Under torchrun the ranks
// share the terminal's process group, so the terminal's SIGINT reaches them, and the
// agent, on its own SIGINT, sends each of them another at once; taking that as the
// second Ctrl-C killed every rank mid-step, its swap files left behind. So a request is
// counted per sender (the kernel for a terminal's signal, else the sending process), and
// only a second one from the same sender ends the rank at once.
volatile sig_atomic_t g_signal = 0;
constexpr int kMaxSenders = 8;
volatile sig_atomic_t g_senders[kMaxSenders];
volatile sig_atomic_t g_n_senders = 0;

void on_stop(int sig, siginfo_t* info, void*) {
  const bool from_process = info != nullptr && (info->si_code == SI_USER || info->si_code == SI_QUEUE);
  const int sender = from_process ? static_cast<int>(info->si_pid) : 0;
  bool again = g_n_senders == kMaxSenders;
  for (int i = 0; i < g_n_senders; ++i) again |= g_senders[i] == sender;
  if (again) {  // stop now, as if no handler were installed
    ::signal(sig, SIG_DFL);
    ::raise(sig);
    return;
  }
  g_senders[g_n_senders] = sender;
  g_n_senders = g_n_senders + 1;
  if (g_signal == 0) g_signal = sig;
}

}  // namespace

void install_rank_signal_handlers(bool die_with_parent) {
  struct sigaction sa {};
  sa.sa_sigaction = on_stop;
  sa.sa_flags = SA_SIGINFO;
  ::sigemptyset(&sa.sa_mask);
  ::sigaddset(&sa.sa_mask, SIGINT);  // one handler at a time: it keeps a table
  ::sigaddset(&sa.sa_mask, SIGTERM);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  if (die_with_parent) {
    const pid_t parent = ::getppid();
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::raise(SIGKILL);  // it died before the request took effect
  }
}

int stop_signal() { return g_signal; }

}  // namespace strata::cli
