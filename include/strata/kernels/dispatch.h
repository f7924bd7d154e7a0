// Which SIMD code the kernels run: Highway's runtime dispatch, made visible.
//
//   for (const auto& t : strata::kernels::available_targets()) fmt::print("{}\n", t.name);
//   STRATA_RETURN_IF_ERROR(strata::kernels::force_target("AVX2"));  // benchmarks, tests
//   ...
//   strata::kernels::reset_target();
//
// Every kernel is compiled once per Highway target (SSSE3, SSE4, AVX2, AVX3 = AVX-512,
// AVX3_DL = AVX-512 with VNNI/VBMI2/BITALG extensions, and a portable fallback, SCALAR
// with this Highway build)
// and the best one the CPU supports is picked on first call.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "strata/base/status.h"

namespace strata::kernels {

struct Target {
  std::int64_t bits;  // Highway's HWY_* bit
  std::string name;   // "AVX2", "AVX3", ...
};

// Targets compiled into this binary that this CPU can run, best first.
std::vector<Target> available_targets();
// The target dispatch uses now (the best available, unless forced).
Target active_target();
// The target whose code the kernels actually run now, read back through their own
// dispatch tables (cast, prologue, steps, roofline). It equals active_target() unless
// Highway's dispatch ignored a forced target, which tests check never happens.
Target kernel_target();
// Makes dispatch use only `name` (case-insensitive) until reset_target(). Errors if
// the target is unknown, not compiled in, or not supported by this CPU.
Status force_target(const std::string& name);
void reset_target();

}  // namespace strata::kernels
