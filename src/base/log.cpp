#include "strata/base/log.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <string>

namespace strata::log {
namespace {

Level level_from_env() {
  Level lvl = Level::kInfo;
  if (const char* env = std::getenv("STRATA_LOG"); env != nullptr && *env != '\0') {
    if (!parse_level(env, &lvl)) {
      std::string msg = fmt::format("[strata W] STRATA_LOG={} is not a level (trace|debug|info|warn|error|off); using info\n", env);
      (void)!::write(STDERR_FILENO, msg.data(), msg.size());
      lvl = Level::kInfo;
    }
  }
  return lvl;
}

int rank_from_env() {
  // Launchers (strata launch, torchrun) set RANK before the process starts, so early
  // messages already carry the right prefix; set_rank() overrides it after rendezvous.
  const char* env = std::getenv("RANK");
  if (env == nullptr || *env == '\0') return -1;
  char* end = nullptr;
  long v = std::strtol(env, &end, 10);
  return (end != nullptr && *end == '\0' && v >= 0) ? static_cast<int>(v) : -1;
}

std::atomic<Level>& level_ref() {
  static std::atomic<Level> lvl{level_from_env()};
  return lvl;
}
std::atomic<int>& rank_ref() {
  static std::atomic<int> r{rank_from_env()};
  return r;
}

}  // namespace

bool parse_level(std::string_view name, Level* out) {
  std::string n(name);
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return std::tolower(c); });
  static constexpr std::pair<std::string_view, Level> kNames[] = {
      {"trace", Level::kTrace}, {"debug", Level::kDebug}, {"info", Level::kInfo},
      {"warn", Level::kWarn},   {"warning", Level::kWarn}, {"error", Level::kError},
      {"off", Level::kOff},     {"none", Level::kOff}};
  for (const auto& [key, lvl] : kNames) {
    if (n == key) {
      *out = lvl;
      return true;
    }
  }
  return false;
}

std::string_view level_name(Level level) {
  switch (level) {
    case Level::kTrace: return "trace";
    case Level::kDebug: return "debug";
    case Level::kInfo: return "info";
    case Level::kWarn: return "warn";
    case Level::kError: return "error";
    case Level::kOff: return "off";
  }
  return "?";
}

Level level() { return level_ref().load(std::memory_order_relaxed); }
void set_level(Level lvl) { level_ref().store(lvl, std::memory_order_relaxed); }
void set_rank(int r) { rank_ref().store(r, std::memory_order_relaxed); }
int rank() { return rank_ref().load(std::memory_order_relaxed); }

bool enabled(Level lvl) { return lvl != Level::kOff && lvl >= level(); }

void write(Level lvl, std::string_view message) {
  static constexpr char kTag[] = {'T', 'D', 'I', 'W', 'E', 'O'};
  const char tag = kTag[static_cast<int>(lvl)];
  const int r = rank();
  std::string line = r >= 0 ? fmt::format("[strata r{} {}] {}\n", r, tag, message)
                            : fmt::format("[strata {}] {}\n", tag, message);
  // One write(2) per line: atomic for pipes up to PIPE_BUF, and never interleaved
  // with another thread's line by stdio buffering.
  (void)!::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace strata::log
