// Runs a shell command in a test and captures its output and exit code.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <string>

namespace strata::testing {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

inline CommandResult run_command(const std::string& cmd) {
  CommandResult r;
  FILE* pipe = ::popen((cmd + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return r;
  std::array<char, 4096> buf{};
  while (std::size_t n = std::fread(buf.data(), 1, buf.size(), pipe)) r.output.append(buf.data(), n);
  const int status = ::pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// A TCP port the kernel reports free now. torchrun's static rendezvous listens on 29500
// unless told otherwise, so two torchrun tests that ctest runs side by side collide
// ("Address already in use") without one each.
inline int free_tcp_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 29500;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  int port = 29500;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

// The start of a torchrun command line for `nproc` ranks running a binary (not Python),
// on a port of its own. --redirects/--tee: torchrun 1.13 on Python 3.11 needs them.
inline std::string torchrun_prefix(int nproc) {
  return "torchrun --nproc_per_node " + std::to_string(nproc) + " --master_port " + std::to_string(free_tcp_port()) +
         " --redirects 1 --tee 1 --no_python ";
}

inline std::string strata_bin() { return std::string(STRATA_TEST_BIN_DIR) + "/strata"; }

}  // namespace strata::testing
