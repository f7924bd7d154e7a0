// STRATA_TEST_FAULT: a fault strata train injects into itself, for the engine-level
// fault suite (tests/apps/fault_test.cpp) and nothing else. Unset, it costs nothing.
//
//   STRATA_TEST_FAULT=<kind>@<step>:<rank>     e.g. kill-backward@3:1
//
// At step <step> (1-based, as printed) on rank <rank>:
//   kill-forward   SIGKILL after the first micro-batch's forward, before its backward
//   kill-backward  SIGKILL as backward starts (a hook on the loss's gradient)
//   kill-step      SIGKILL after backward, as the optimizer step starts
//   stop           SIGSTOP before backward: a hung rank, for the peers' timeout
//   eio, enospc    every swap read and write from then on fails with EIO / ENOSPC
//   corrupt        the next swap read returns a flipped byte
#pragma once

#include <cstdint>
#include <memory>

#include "strata/base/status.h"
#include "strata/io/fault_injection.h"

namespace strata::cli {

struct TestFault {
  enum class Kind : std::uint8_t { kNone, kKillForward, kKillBackward, kKillStep, kStop, kEio, kEnospc, kCorrupt };
  Kind kind = Kind::kNone;
  std::int64_t step = 0;  // 1-based
  int rank = 0;
  std::shared_ptr<io::FaultInjector> injector;  // for the I/O kinds, on the faulty rank

  // The fault for this rank from the environment; kNone when unset or for another rank.
  static Result<TestFault> from_env(int rank);
  bool io() const { return kind == Kind::kEio || kind == Kind::kEnospc || kind == Kind::kCorrupt; }
  // Arms the I/O kinds; called at the start of the faulty step.
  void arm_io() const;
};

}  // namespace strata::cli
