#include "strata/io/fault_injection.h"

#include <algorithm>

namespace strata::io {

bool FaultInjector::matches(FaultTarget t, bool write) {
  return t == FaultTarget::kAny || (t == FaultTarget::kWrite) == write;
}

void FaultInjector::fail_next(int err, int count, FaultTarget target, int skip) {
  if (count <= 0) return;
  std::lock_guard lock(mu_);
  rules_.push_back(Rule{Rule::Kind::kFail, target, err, std::max(skip, 0), count, 0});
}

void FaultInjector::shorten_next(int count, FaultTarget target) {
  if (count <= 0) return;
  std::lock_guard lock(mu_);
  rules_.push_back(Rule{Rule::Kind::kShort, target, 0, 0, count, 0});
}

void FaultInjector::corrupt_next_read(std::size_t byte_index) {
  std::lock_guard lock(mu_);
  rules_.push_back(Rule{Rule::Kind::kCorrupt, FaultTarget::kRead, 0, 0, 1, byte_index});
}

void FaultInjector::clear() {
  std::lock_guard lock(mu_);
  rules_.clear();
}

std::uint64_t FaultInjector::failures_injected() const {
  std::lock_guard lock(mu_);
  return failures_;
}
std::uint64_t FaultInjector::shorts_injected() const {
  std::lock_guard lock(mu_);
  return shorts_;
}
std::uint64_t FaultInjector::corruptions_injected() const {
  std::lock_guard lock(mu_);
  return corruptions_;
}

int FaultInjector::on_complete(bool write, int res, std::byte* buf, std::size_t length) {
  std::lock_guard lock(mu_);
  for (auto it = rules_.begin(); it != rules_.end(); ++it) {
    Rule& r = *it;
    if (!matches(r.target, write)) continue;
    // Short and corrupt rules only make sense on a transfer that moved bytes; a piece
    // that failed for real passes them by without using them up.
    const bool applicable = r.kind == Rule::Kind::kFail || (r.kind == Rule::Kind::kShort && res > 4096) ||
                            (r.kind == Rule::Kind::kCorrupt && res > 0);
    if (!applicable) continue;
    if (r.skip > 0) {
      --r.skip;
      continue;
    }
    switch (r.kind) {
      case Rule::Kind::kFail:
        res = -r.err;
        ++failures_;
        break;
      case Rule::Kind::kShort:
        res = (res / 2) & ~4095;
        ++shorts_;
        break;
      case Rule::Kind::kCorrupt:
        buf[r.byte_index % std::min<std::size_t>(length, static_cast<std::size_t>(res))] ^= std::byte{0xFF};
        ++corruptions_;
        break;
    }
    if (--r.count == 0) rules_.erase(it);
    break;  // one fault per piece
  }
  return res;
}

}  // namespace strata::io
