// StepTrace: a Chrome/Perfetto trace of one training step.
//
//   trace.arm("out/trace.json");            // record the next step
//   trace.begin_step();                     // recording starts if armed
//   trace.add(StepTrace::kGather, "gather c3", t0, t1);
//   STRATA_RETURN_IF_ERROR(trace.end_step(rank));   // writes the file, disarms
//
// Tracks (one row each in the viewer): compute (module forward/backward), gather,
// reduce-scatter, copy (tier-to-tier copies and NVMe I/O), optimizer. Spans of async
// collectives run from issue to the moment strata saw them complete (a wait or a poll),
// so they are upper bounds on the collective's own duration. Open the file in
// https://ui.perfetto.dev or chrome://tracing.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "strata/base/status.h"

namespace strata::engine {

class StepTrace {
 public:
  using Clock = std::chrono::steady_clock;
  enum Track : int { kCompute = 0, kGather, kReduceScatter, kCopy, kOptimizer, kNumTracks };

  void arm(std::string path);
  bool armed() const { return !path_.empty(); }
  bool recording() const { return recording_; }
  void begin_step();
  void add(Track track, std::string name, Clock::time_point begin, Clock::time_point end);
  // Writes the file if this step was recorded. Returns ok() otherwise.
  Status end_step(int rank);

 private:
  struct Event {
    Track track;
    std::string name;
    Clock::time_point begin, end;
  };
  std::string path_;
  bool recording_ = false;
  Clock::time_point origin_;
  std::vector<Event> events_;
};

}  // namespace strata::engine
