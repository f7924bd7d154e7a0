// Helpers shared by the io tests: a scratch directory, patterned data, sizes that
// shrink under the sanitizers (which are slow and memory-hungry).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <span>
#include <string>

#include "strata/base/aligned.h"
#include "strata/io/swap_store.h"

namespace strata::testing {

#ifdef STRATA_IO_TEST_SMALL
inline constexpr std::size_t kMaxTestBytes = std::size_t{4} << 20;  // ASan: up to 4 MiB per op
#else
inline constexpr std::size_t kMaxTestBytes = std::size_t{64} << 20;  // release: up to 64 MiB per op
#endif

// A fresh directory under $STRATA_TEST_DIR or /tmp, removed with everything in it.
class ScratchDir {
 public:
  ScratchDir() {
    const char* base = std::getenv("STRATA_TEST_DIR");
    std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/strata-iotest-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed for " << tmpl;
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Fills `out` with bytes that depend on `seed` and the position, fast enough for
// hundreds of MiB: a splitmix64 stream, eight bytes at a time.
inline void fill_pattern(std::span<std::byte> out, std::uint64_t seed) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  std::size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    x += 0x9E3779B97F4A7C15ull;
    std::uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::memcpy(out.data() + i, &z, 8);
  }
  for (; i < out.size(); ++i) out[i] = static_cast<std::byte>((seed + i) * 131);
}

// The swap key of one chunk's tensor (of the optimizer state unless given).
inline io::SwapKey swap_key(std::uint64_t chunk, std::uint32_t tensor = 0, io::SwapKind kind = io::SwapKind::kOptimizer) {
  return io::SwapKey{kind, tensor, chunk};
}

inline AlignedBuffer make_buffer(std::size_t bytes, std::uint64_t seed = 0, bool fill = true) {
  auto b = AlignedBuffer::allocate(bytes, 4096);
  EXPECT_TRUE(b.has_value());
  if (fill && b) fill_pattern(b->span(), seed);
  return std::move(*b);
}

// Log-uniform size in [lo, hi]: small and large sizes are equally likely by magnitude.
inline std::size_t random_size(std::mt19937_64& rng, std::size_t lo, std::size_t hi) {
  std::uniform_real_distribution<double> d(std::log(static_cast<double>(lo)), std::log(static_cast<double>(hi)));
  const auto s = static_cast<std::size_t>(std::exp(d(rng)));
  return std::clamp(s, lo, hi);
}

}  // namespace strata::testing

#include <sys/wait.h>
#include <unistd.h>

#include <functional>

namespace strata::testing {

// Runs `body` in a forked child (for process-wide changes such as rlimits, or to
// simulate a crash with _exit). The child's result string comes back through a pipe;
// an empty string means success. Returns the child's result, or a description of how
// it died.
inline std::string run_in_child(const std::function<std::string()>& body) {
  int fds[2];
  if (::pipe(fds) != 0) return "pipe failed";
  const pid_t pid = ::fork();
  if (pid < 0) return "fork failed";
  if (pid == 0) {
    ::close(fds[0]);
    const std::string out = body();
    [[maybe_unused]] ssize_t n = ::write(fds[1], out.data(), out.size());
    ::close(fds[1]);
    std::fflush(nullptr);
    ::_exit(0);  // no atexit handlers, no destructors of the parent's objects
  }
  ::close(fds[1]);
  std::string out;
  char buf[1024];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) out += " (child died: status " + std::to_string(status) + ")";
  return out;
}

}  // namespace strata::testing
