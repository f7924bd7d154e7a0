// STRATA_TEST_FAULT: a fault strata train injects into itself, for the engine-level
// fault suite (tests/apps/fault_test.cpp) and nothing else. Unset, it costs nothing.
//
//   STRATA_TEST_FAULT=<kind>@<step>:<rank>     e.g. kill-backward@3:1
//
// At step <step> (1-based, as printed) on rank <rank>:
//   kill-forward   SIGKILL in the middle of the first micro-batch's forward: at the
//                  unit access that is half way through it (the engine's on_access),
//                  with earlier units' chunks gathered and prefetches in flight
//   kill-backward  SIGKILL half way through that micro-batch's backward, the same way
//   kill-step      SIGKILL after backward, as the optimizer step starts
//   stop           SIGSTOP before backward: a hung rank, for the peers' timeout
//   eio, enospc    every swap read and write from then on fails with EIO / ENOSPC
//   corrupt        the next swap read returns a flipped byte
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "strata/base/status.h"
#include "strata/io/fault_injection.h"
#include "strata/plan/trace.h"

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

  // kill-forward and kill-backward: the engine's on_access hook (EngineOptions), which
  // kills at the `nth` access (1-based) of the fault's phase once arm_kill() was called;
  // empty for the other kinds.
  std::function<void(int unit, plan::Phase phase)> access_hook(int nth) const;
  void arm_kill() const { kill_armed->store(true); }

 private:
  std::shared_ptr<std::atomic<bool>> kill_armed = std::make_shared<std::atomic<bool>>(false);
};

}  // namespace strata::cli
