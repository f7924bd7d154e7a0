#include "interrupt.h"

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

namespace strata::cli {
namespace {

volatile sig_atomic_t g_signal = 0;

void on_stop(int sig) {
  if (g_signal != 0) {  // the second: stop now, as if no handler were installed
    ::signal(sig, SIG_DFL);
    ::raise(sig);
    return;
  }
  g_signal = sig;
}

}  // namespace

void install_rank_signal_handlers(bool die_with_parent) {
  struct sigaction sa {};
  sa.sa_handler = on_stop;
  ::sigemptyset(&sa.sa_mask);
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
