#include "strata/kernels/dispatch.h"

#include <algorithm>
#include <cctype>

#include <cassert>
#include <cstring>

#include <fmt/ranges.h>  // fmt::join (in format.h before fmt 11)
#include <hwy/targets.h>

#include "kernels/internal.h"
#include "kernels/roofline_table.h"
#include "kernels/step_args.h"

namespace strata::kernels {
namespace {

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  return s;
}

}  // namespace

std::vector<Target> available_targets() {
  std::vector<Target> out;
  // SupportedAndGeneratedTargets lists lowest bit first, and lower bits are better.
  for (std::int64_t bits : hwy::SupportedAndGeneratedTargets()) out.push_back({bits, hwy::TargetName(bits)});
  return out;
}

Target active_target() {
  auto targets = available_targets();
  return targets.empty() ? Target{0, "none"} : targets.front();
}

Target kernel_target() {
  // Every kernel file has its own dispatch table, but they share Highway's chosen-target
  // state, so they must agree.
  const char* name = detail::cast_table().target;
  assert(std::strcmp(name, detail::prologue_table().target) == 0);
  assert(std::strcmp(name, detail::adam_table().target) == 0);
  assert(std::strcmp(name, detail::one_state_table().target) == 0);
  assert(std::strcmp(name, detail::lamb_table().target) == 0);
  assert(std::strcmp(name, detail::roof_table().target) == 0);
  for (const Target& t : available_targets()) {
    if (t.name == name) return t;
  }
  return Target{0, name};
}

Status force_target(const std::string& name) {
  const std::string want = upper(name);
  hwy::SetSupportedTargetsForTest(0);  // see every target the CPU has, not a prior mock
  std::vector<std::string> names;
  for (const Target& t : available_targets()) {
    if (upper(t.name) == want) {
      hwy::SetSupportedTargetsForTest(t.bits);
      return ok();
    }
    names.push_back(t.name);
  }
  return make_error(ErrorCode::kInvalidArgument, "SIMD target '{}' is not available here; choose one of: {}", name,
                    fmt::join(names, ", "));
}

void reset_target() { hwy::SetSupportedTargetsForTest(0); }

}  // namespace strata::kernels
