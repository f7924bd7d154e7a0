#include "strata/engine/step_trace.h"

#include <fstream>

#include <nlohmann/json.hpp>

namespace strata::engine {

void StepTrace::arm(std::string path) { path_ = std::move(path); }

void StepTrace::begin_step() {
  if (!armed() || recording_) return;
  recording_ = true;
  origin_ = Clock::now();
  events_.clear();
}

void StepTrace::add(Track track, std::string name, Clock::time_point begin, Clock::time_point end) {
  if (recording_) events_.push_back({track, std::move(name), begin, end});
}

Status StepTrace::end_step(int rank) {
  if (!recording_) return ok();
  recording_ = false;
  static constexpr const char* kTrackNames[] = {"compute", "gather", "reduce-scatter", "copy", "optimizer"};
  nlohmann::json events = nlohmann::json::array();
  const int pid = rank < 0 ? 0 : rank;
  events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", pid}, {"args", {{"name", fmt::format("rank {}", pid)}}}});
  for (int t = 0; t < kNumTracks; ++t) {
    events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", pid}, {"tid", t}, {"args", {{"name", kTrackNames[t]}}}});
  }
  auto us = [this](Clock::time_point t) { return std::chrono::duration<double, std::micro>(t - origin_).count(); };
  for (const Event& e : events_) {
    events.push_back({{"name", e.name}, {"cat", kTrackNames[e.track]}, {"ph", "X"}, {"pid", pid}, {"tid", e.track},
                      {"ts", us(e.begin)}, {"dur", std::max(0.0, us(e.end) - us(e.begin))}});
  }
  const std::string path = path_;
  path_.clear();
  std::ofstream out(path);
  out << nlohmann::json{{"traceEvents", events}, {"displayTimeUnit", "ms"}}.dump();
  if (!out) return make_error(errno_error(errno, "cannot write the step trace").with_path(path));
  return ok();
}

}  // namespace strata::engine
