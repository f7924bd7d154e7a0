// The access trace; see strata/plan/trace.h.
#include "strata/plan/trace.h"

#include <xxhash.h>

#include <fmt/format.h>

#include "strata/base/log.h"

namespace strata::plan {

std::string_view to_string(Phase p) { return p == Phase::kForward ? "fwd" : "bwd"; }

std::string describe(const ModuleAccess& a) { return fmt::format("module {} ({})", a.module_id, to_string(a.phase)); }

std::uint64_t trace_hash(std::span<const ModuleAccess> accesses) {
  // Canonical encoding: a version tag, then per access the module id as 8 bytes little
  // endian and the phase as one byte. Independent of struct layout and host byte order.
  std::string buf = "strata.trace.v1";
  buf.reserve(buf.size() + accesses.size() * 9);
  for (const ModuleAccess& a : accesses) {
    auto id = static_cast<std::uint64_t>(static_cast<std::int64_t>(a.module_id));
    for (int b = 0; b < 8; ++b) buf.push_back(static_cast<char>((id >> (8 * b)) & 0xff));
    buf.push_back(static_cast<char>(a.phase));
  }
  return XXH3_64bits(buf.data(), buf.size());
}

void AccessTrace::begin_step() {
  ++step_;
  index_ = 0;
  if (state_ != State::kComplete) {
    // RECORD restarts (a step that never ended recorded nothing usable); INVALID re-records.
    state_ = State::kRecord;
    accesses_.clear();
  }
}

std::optional<std::size_t> AccessTrace::on_access(ModuleAccess a) {
  const std::size_t at = index_++;
  switch (state_) {
    case State::kRecord:
      accesses_.push_back(a);
      return std::nullopt;
    case State::kInvalid:
      return std::nullopt;
    case State::kComplete:
      if (at >= accesses_.size()) {
        invalidate(at, "end of step", describe(a));
        return std::nullopt;
      }
      if (!(accesses_[at] == a)) {
        invalidate(at, describe(accesses_[at]), describe(a));
        return std::nullopt;
      }
      return at;
  }
  return std::nullopt;
}

void AccessTrace::end_step() {
  if (state_ == State::kRecord) {
    if (!accesses_.empty()) state_ = State::kComplete;
  } else if (state_ == State::kComplete && index_ < accesses_.size()) {
    invalidate(index_, describe(accesses_[index_]), "end of step");
  }
}

void AccessTrace::invalidate(std::size_t at, const std::string& expected, const std::string& actual) {
  state_ = State::kInvalid;
  ++n_warnings_;
  last_warning_ = fmt::format(
      "access trace mismatch at step {}, access {}: expected {}, got {}; fetching on demand "
      "and re-recording from the next step",
      step_, at, expected, actual);
  log::warn("{}", last_warning_);
}

}  // namespace strata::plan
