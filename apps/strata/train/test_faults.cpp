#include "test_faults.h"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <string>
#include <utility>

namespace strata::cli {

Result<TestFault> TestFault::from_env(int rank) {
  TestFault f;
  const char* v = std::getenv("STRATA_TEST_FAULT");
  if (v == nullptr || *v == '\0') return f;
  const std::string s = v;
  const auto at = s.find('@'), colon = s.find(':');
  static const std::pair<const char*, Kind> kKinds[] = {
      {"kill-forward", Kind::kKillForward}, {"kill-backward", Kind::kKillBackward}, {"kill-step", Kind::kKillStep},
      {"stop", Kind::kStop}, {"eio", Kind::kEio}, {"enospc", Kind::kEnospc}, {"corrupt", Kind::kCorrupt}};
  Kind kind = Kind::kNone;
  for (const auto& [name, k] : kKinds)
    if (at != std::string::npos && s.substr(0, at) == name) kind = k;
  if (kind == Kind::kNone || colon == std::string::npos || colon < at) {
    return make_error(ErrorCode::kInvalidArgument, "STRATA_TEST_FAULT={}: expected <kind>@<step>:<rank>", s);
  }
  f.step = std::atoll(s.substr(at + 1, colon - at - 1).c_str());
  f.rank = std::atoi(s.substr(colon + 1).c_str());
  if (f.rank != rank) return TestFault{};
  f.kind = kind;
  if (f.io()) f.injector = std::make_shared<io::FaultInjector>();
  return f;
}

void TestFault::arm_io() const {
  constexpr int kForever = 1 << 30;
  switch (kind) {
    case Kind::kEio: injector->fail_next(EIO, kForever); break;
    case Kind::kEnospc: injector->fail_next(ENOSPC, kForever, io::FaultTarget::kWrite); break;
    case Kind::kCorrupt: injector->corrupt_next_read(123); break;
    default: break;
  }
}

std::function<void(int, plan::Phase)> TestFault::access_hook(int nth) const {
  if (kind != Kind::kKillForward && kind != Kind::kKillBackward) return {};
  const plan::Phase phase = kind == Kind::kKillForward ? plan::Phase::kForward : plan::Phase::kBackward;
  auto seen = std::make_shared<int>(0);
  return [armed = kill_armed, phase, nth, seen](int, plan::Phase p) {
    if (!armed->load() || p != phase) return;
    if (++*seen == nth) ::raise(SIGKILL);
  };
}

}  // namespace strata::cli
