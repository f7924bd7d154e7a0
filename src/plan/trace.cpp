// The access trace; see strata/plan/trace.h.
#include "strata/plan/trace.h"

#include <bit>

#include <xxhash.h>

#include <fmt/format.h>

#include "strata/base/log.h"

namespace strata::plan {

std::string_view to_string(Phase p) { return p == Phase::kForward ? "fwd" : "bwd"; }

std::string describe(const ModuleAccess& a) { return fmt::format("module {} ({})", a.module_id, to_string(a.phase)); }

namespace {

template <typename T>
void put_le(std::string& buf, T v, int bytes) {
  const auto u = static_cast<std::uint64_t>(v);
  for (int b = 0; b < bytes; ++b) buf.push_back(static_cast<char>((u >> (8 * b)) & 0xff));
}

// Each access ends before the next begins: the trace of most models.
bool sequential(std::span<const std::uint32_t> open_through, std::span<const std::uint32_t> close_order) {
  for (std::size_t i = 0; i < open_through.size(); ++i)
    if (open_through[i] != i) return false;
  for (std::size_t i = 0; i < close_order.size(); ++i)
    if (close_order[i] != i) return false;
  return true;
}

}  // namespace

std::uint64_t trace_hash(std::span<const ModuleAccess> accesses, std::span<const std::uint32_t> open_through,
                         std::span<const std::uint32_t> close_order) {
  // Canonical encoding: a version tag, then per access the module id as 8 bytes little
  // endian and the phase as one byte. Independent of struct layout and host byte order.
  // Where accesses end is appended only when they overlap, so a sequential trace keeps
  // the hash it always had.
  std::string buf = "strata.trace.v1";
  buf.reserve(buf.size() + accesses.size() * 17);
  for (const ModuleAccess& a : accesses) {
    put_le(buf, static_cast<std::int64_t>(a.module_id), 8);
    buf.push_back(static_cast<char>(a.phase));
  }
  if (!sequential(open_through, close_order)) {
    buf += "ends";
    for (std::uint32_t v : open_through) put_le(buf, v, 4);
    for (std::uint32_t v : close_order) put_le(buf, v, 4);
  }
  return XXH3_64bits(buf.data(), buf.size());
}

void AccessTrace::begin_step() {
  ++step_;
  index_ = 0;
  n_closed_ = 0;
  closed_.clear();
  if (state_ != State::kComplete) {
    // RECORD restarts (a step that never ended recorded nothing usable); INVALID re-records.
    state_ = State::kRecord;
    accesses_.clear();
    open_through_.clear();
    close_order_.clear();
  }
}

std::optional<std::size_t> AccessTrace::on_access(ModuleAccess a) {
  const std::size_t at = index_++;
  switch (state_) {
    case State::kRecord:
      accesses_.push_back(a);
      open_through_.push_back(static_cast<std::uint32_t>(at));
      return std::nullopt;
    case State::kInvalid:
      return std::nullopt;
    case State::kComplete:
      if (at >= accesses_.size()) {
        invalidate(at, "end of step", describe(a));
        return std::nullopt;
      }
      if (!(accesses_[at] == a)) {
        std::string got = describe(a);
        // The step's first forward again where a backward was due: most often a forward
        // whose outputs never got a backward, which opened this step early.
        if (at > 0 && a == accesses_[0] && accesses_[at].phase == Phase::kBackward && a.phase == Phase::kForward) {
          got += " (the forward began again before a backward: did a forward with gradients on get no backward, "
                 "such as an evaluation outside torch.no_grad()?)";
        }
        invalidate(at, describe(accesses_[at]), got);
        return std::nullopt;
      }
      return at;
  }
  return std::nullopt;
}

bool AccessTrace::on_close(std::size_t at) {
  if (at >= index_) return true;  // not an access of this step
  if (closed_.size() < index_) closed_.resize(index_, false);
  if (closed_[at]) return true;
  closed_[at] = true;
  const std::size_t nth = n_closed_++;
  const auto last = static_cast<std::uint32_t>(index_ - 1);
  switch (state_) {
    case State::kRecord:
      open_through_[at] = last;
      close_order_.push_back(static_cast<std::uint32_t>(at));
      return true;
    case State::kInvalid:
      return true;
    case State::kComplete:
      if (nth < close_order_.size() && close_order_[nth] == at && open_through_[at] == last) return true;
      invalidate(at, fmt::format("it to end after access {}", open_through_[at]),
                 fmt::format("its end after access {} ({} ended before it)", last, nth));
      return false;
  }
  return true;
}

void AccessTrace::end_step() {
  if (state_ == State::kRecord) {
    // Accesses still open end with the step, innermost (latest begun) first.
    closed_.resize(index_, false);
    for (std::size_t at = index_; at-- > 0;) {
      if (closed_[at]) continue;
      open_through_[at] = static_cast<std::uint32_t>(index_ - 1);
      close_order_.push_back(static_cast<std::uint32_t>(at));
    }
    if (!accesses_.empty()) state_ = State::kComplete;
  } else if (state_ == State::kComplete && index_ < accesses_.size()) {
    invalidate(index_, describe(accesses_[index_]), "end of step");
  }
}

void AccessTrace::rerecord() {
  if (state_ == State::kComplete) state_ = State::kInvalid;
}

void AccessTrace::invalidate(std::size_t at, const std::string& expected, const std::string& actual) {
  state_ = State::kInvalid;
  ++n_warnings_;
  last_warning_ = fmt::format(
      "access trace mismatch at step {}, access {}: expected {}, got {}; fetching on demand "
      "and re-recording from the next step",
      step_, at, expected, actual);
  // Note [mismatches logged]: a model whose modules run in another order from step to
  // step (a mixture of experts that skips the experts no token chose) mismatches every
  // other step for good; the log gets the 1st, 2nd, 4th, 8th, ... of them.
  if (std::has_single_bit(n_warnings_)) {
    ++n_logged_;
    if (n_warnings_ == 1) {
      log::warn("{}", last_warning_);
    } else {
      log::warn("{} (mismatch {}; logged at the 1st, 2nd, 4th, 8th, ...: this model runs its modules in another "
                "order in some steps, and those steps fetch on demand; the engine's trace_invalidations counts all)",
                last_warning_, n_warnings_);
    }
  }
}

}  // namespace strata::plan
