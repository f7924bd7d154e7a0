// Logging with a rank prefix, levels from the STRATA_LOG environment variable.
//
//   strata::log::set_rank(rank);                // once, after rendezvous
//   strata::log::info("gathered {} chunks", n);  // "[strata r1 I] gathered 4 chunks"
//
// STRATA_LOG=trace|debug|info|warn|error|off (default info). Lines go to stderr, one
// write per line so that ranks sharing a terminal do not interleave mid-line.
#pragma once

#include <string_view>

#include <fmt/format.h>

namespace strata::log {

enum class Level { kTrace, kDebug, kInfo, kWarn, kError, kOff };

// Parses "debug", "WARN", ... Returns false for an unknown name.
bool parse_level(std::string_view name, Level* out);
std::string_view level_name(Level level);

Level level();
void set_level(Level level);
// -1 means "not distributed": the prefix then has no rank.
void set_rank(int rank);
int rank();

bool enabled(Level level);
void write(Level level, std::string_view message);

template <class... Args>
void emit(Level lvl, fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(lvl)) write(lvl, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void trace(fmt::format_string<Args...> f, Args&&... a) { emit(Level::kTrace, f, std::forward<Args>(a)...); }
template <class... Args>
void debug(fmt::format_string<Args...> f, Args&&... a) { emit(Level::kDebug, f, std::forward<Args>(a)...); }
template <class... Args>
void info(fmt::format_string<Args...> f, Args&&... a) { emit(Level::kInfo, f, std::forward<Args>(a)...); }
template <class... Args>
void warn(fmt::format_string<Args...> f, Args&&... a) { emit(Level::kWarn, f, std::forward<Args>(a)...); }
template <class... Args>
void error(fmt::format_string<Args...> f, Args&&... a) { emit(Level::kError, f, std::forward<Args>(a)...); }

}  // namespace strata::log
