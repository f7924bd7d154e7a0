// Helpers for the rank programs that multi-rank tests start (zero_worker, zero3_worker):
// a failed check prints "WRONG (rank r): ..." and exits 1; an expected failure prints
// "EXPECTED FAILURE: ..." and exits 3. _Exit skips destructors on purpose: after a
// failed collective the process group's threads may still be blocked.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include <c10/core/Device.h>
#include <fmt/format.h>

#include "strata/base/status.h"
#include "strata/comm/communicator.h"
#include "strata/plan/tier.h"

namespace strata::testing {

inline comm::Communicator*& worker_comm() {
  static comm::Communicator* c = nullptr;
  return c;
}

[[noreturn]] inline void fail(const std::string& what) {
  fmt::print(stderr, "WRONG (rank {}): {}\n", worker_comm() ? worker_comm()->rank() : -1, what);
  std::fflush(stderr);
  std::_Exit(1);
}

template <class T>
T check(Result<T> r, const char* what) {
  if (!r) fail(fmt::format("{}: {}", what, r.error()));
  return std::move(*r);
}

inline void check(const Status& s, const char* what) {
  if (!s) fail(fmt::format("{}: {}", what, s.error()));
}

// Where a worker puts its model, reference and batches: $STRATA_TEST_DEVICE (default
// cpu; `cuda` for the gpu-labelled tests, tests/engine/gpu_test.cpp).
inline c10::Device test_device() {
  const char* d = std::getenv("STRATA_TEST_DEVICE");
  return c10::Device(d != nullptr && *d != '\0' ? d : "cpu");
}

[[noreturn]] inline void expected_failure(const Error& e) {
  fmt::print(stderr, "EXPECTED FAILURE: {}\n", e);
  std::fflush(stderr);
  std::_Exit(3);
}

// Removes `suffix` from the end of a worker's mode argument; whether it was there.
inline bool take_suffix(std::string& mode, std::string_view suffix) {
  if (!mode.ends_with(suffix)) return false;
  mode.resize(mode.size() - suffix.size());
  return true;
}

// Note [gradients kept on compute] (strata.gradient_shards_on_compute): every gradient
// shard in compute memory and none on host or nvme, in an engine's memory_by_kind() after
// setup (at stages 2-3 the gradient buffers have no bytes before the first backward).
template <class ByKind>
void expect_grads_kept_on_compute(const ByKind& by_kind) {
  const auto on = [&](plan::Tier t) { return by_kind[plan::tier_index(t)][plan::kind_index(plan::StateKind::kGrads)]; };
  if (on(plan::Tier::kHost) != 0 || on(plan::Tier::kNvme) != 0 || on(plan::Tier::kCompute) == 0) {
    fail(fmt::format("gradient shards kept on compute: {} bytes on compute, {} on host, {} on nvme",
                     on(plan::Tier::kCompute), on(plan::Tier::kHost), on(plan::Tier::kNvme)));
  }
}

}  // namespace strata::testing
