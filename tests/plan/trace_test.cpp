// The access trace: record, freeze, validate with inserted, dropped and reordered
// modules (one warning each, then a re-record), and a hash that never changes.
#include <gtest/gtest.h>

#include "strata/plan/trace.h"

namespace strata::plan {
namespace {

std::vector<ModuleAccess> fwd_bwd(std::vector<int> modules) {
  std::vector<ModuleAccess> out;
  for (int m : modules) out.push_back({m, Phase::kForward});
  for (auto it = modules.rbegin(); it != modules.rend(); ++it) out.push_back({*it, Phase::kBackward});
  return out;
}

// Runs one step; returns the indexes on_access gave back (-1 for nullopt).
std::vector<long> run_step(AccessTrace& t, const std::vector<ModuleAccess>& step) {
  std::vector<long> at;
  t.begin_step();
  for (const ModuleAccess& a : step) {
    auto i = t.on_access(a);
    at.push_back(i ? static_cast<long>(*i) : -1);
  }
  t.end_step();
  return at;
}

TEST(Trace, RecordsFreezesAndMatches) {
  AccessTrace t;
  const auto step = fwd_bwd({1, 2, 3});
  EXPECT_EQ(run_step(t, step), std::vector<long>(6, -1));  // recording
  ASSERT_TRUE(t.complete());
  EXPECT_EQ(t.accesses().size(), 6u);
  EXPECT_EQ(run_step(t, step), (std::vector<long>{0, 1, 2, 3, 4, 5}));
  EXPECT_TRUE(t.complete());
  EXPECT_EQ(t.n_warnings(), 0u);
}

struct Case {
  const char* name;
  std::vector<ModuleAccess> step;
  std::string expect;  // the part of the warning that names expected and actual
};

TEST(Trace, MismatchesInvalidateOnceAndReRecord) {
  const auto good = fwd_bwd({1, 2, 3});
  std::vector<Case> cases;
  {
    auto inserted = good;
    inserted.insert(inserted.begin() + 2, {9, Phase::kForward});
    cases.push_back({"inserted", inserted, "access 2: expected module 3 (fwd), got module 9 (fwd)"});
  }
  {
    auto dropped = good;
    dropped.erase(dropped.begin() + 1);
    cases.push_back({"dropped", dropped, "access 1: expected module 2 (fwd), got module 3 (fwd)"});
  }
  {
    auto reordered = good;
    std::swap(reordered[3], reordered[4]);
    cases.push_back({"reordered", reordered, "access 3: expected module 3 (bwd), got module 2 (bwd)"});
  }
  {
    auto extra = good;
    extra.push_back({4, Phase::kForward});
    cases.push_back({"extra at the end", extra, "access 6: expected end of step, got module 4 (fwd)"});
  }
  {
    auto short_step = good;
    short_step.pop_back();
    cases.push_back({"ends early", short_step, "access 5: expected module 1 (bwd), got end of step"});
  }
  {
    // A forward whose outputs got no backward (an evaluation with gradients on) opens the
    // step early: the next forward comes where a backward was due. The warning says so.
    auto again = fwd_bwd({1, 2, 3});
    again.insert(again.begin() + 3, {{1, Phase::kForward}, {2, Phase::kForward}, {3, Phase::kForward}});
    cases.push_back({"forward again", again, "access 3: expected module 3 (bwd), got module 1 (fwd) (the forward "
                                             "began again before a backward"});
  }
  {
    auto phase = good;
    phase[0].phase = Phase::kBackward;
    cases.push_back({"wrong phase", phase, "access 0: expected module 1 (fwd), got module 1 (bwd)"});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    AccessTrace t;
    run_step(t, good);
    const std::uint64_t h = t.hash();
    run_step(t, good);
    const auto at = run_step(t, c.step);  // step 3 diverges
    EXPECT_EQ(t.state(), AccessTrace::State::kInvalid);
    EXPECT_EQ(t.n_warnings(), 1u) << "one warning per invalidated step";
    EXPECT_NE(t.last_warning().find("step 3, " + c.expect), std::string::npos) << t.last_warning();
    // After the mismatch nothing is matched (prefetching stops for the step).
    const auto first_bad = std::find(at.begin(), at.end(), -1);
    EXPECT_TRUE(std::all_of(first_bad, at.end(), [](long i) { return i == -1; }));
    // The next step records the new path; the one after runs on it.
    EXPECT_EQ(run_step(t, c.step), std::vector<long>(c.step.size(), -1));
    EXPECT_TRUE(t.complete());
    EXPECT_NE(t.hash(), h);
    const auto again = run_step(t, c.step);
    EXPECT_EQ(again.back(), static_cast<long>(c.step.size()) - 1);
    EXPECT_EQ(t.n_warnings(), 1u);
  }
}

// Note [adopted parameters] (src/engine/access_driver.h): a unit took a parameter while
// the frozen trace was being followed. rerecord() makes the rest of the step run
// unmatched and the next step record afresh, with no warning (nothing mismatched); while
// recording it changes nothing.
// Note [mismatches logged]: a model whose path alternates between two orders (a mixture
// of experts skipping other experts each step) mismatches every other step; each
// mismatch is counted, the log gets the 1st, 2nd, 4th, 8th and 16th of 20.
TEST(Trace, AlternatingPathsAreCountedEveryTimeAndLoggedAtPowersOfTwo) {
  const std::vector<ModuleAccess> a = {{0, Phase::kForward}, {1, Phase::kForward}, {1, Phase::kBackward}};
  const std::vector<ModuleAccess> b = {{0, Phase::kForward}, {2, Phase::kForward}, {2, Phase::kBackward}};
  AccessTrace t;
  for (int step = 0; step < 40; ++step) run_step(t, step % 2 ? b : a);  // a recorded; b mismatches; a recorded; ...
  EXPECT_EQ(t.n_warnings(), 20u) << "every other step mismatches";
  EXPECT_EQ(t.n_logged(), 5u);  // 1, 2, 4, 8, 16
  EXPECT_NE(t.last_warning().find("access 1: expected module 1 (fwd), got module 2 (fwd)"), std::string::npos)
      << t.last_warning();
}

TEST(Trace, RerecordDropsTheFrozenTraceWithoutAWarning) {
  AccessTrace t;
  const auto step = fwd_bwd({1, 2, 3});
  run_step(t, step);
  t.rerecord();  // frozen when step 1 ended
  EXPECT_EQ(t.state(), AccessTrace::State::kInvalid);
  EXPECT_EQ(run_step(t, step), std::vector<long>(6, -1));  // records again
  ASSERT_TRUE(t.complete());

  t.begin_step();
  EXPECT_EQ(t.on_access(step[0]), std::optional<std::size_t>(0));
  t.rerecord();
  EXPECT_EQ(t.on_access(step[1]), std::nullopt);  // the rest of the step is not matched
  for (std::size_t i = 2; i < step.size(); ++i) EXPECT_EQ(t.on_access(step[i]), std::nullopt);
  t.end_step();
  EXPECT_EQ(run_step(t, step), std::vector<long>(6, -1));
  EXPECT_EQ(run_step(t, step), (std::vector<long>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(t.n_warnings(), 0u);

  AccessTrace recording;  // while recording: nothing to drop
  recording.begin_step();
  recording.on_access(step[0]);
  recording.rerecord();
  EXPECT_EQ(recording.state(), AccessTrace::State::kRecord);
  for (std::size_t i = 1; i < step.size(); ++i) recording.on_access(step[i]);
  recording.end_step();
  EXPECT_TRUE(recording.complete());
  EXPECT_EQ(recording.accesses().size(), step.size());
}

TEST(Trace, HashIsStableAndSensitive) {
  // A fixed value: the hash must be identical on every rank, process, run and build.
  const auto step = fwd_bwd({0, 1, 2});
  EXPECT_EQ(trace_hash(step), trace_hash(fwd_bwd({0, 1, 2})));
  EXPECT_EQ(trace_hash(step), 0x676a31ca67ce166aull);
  auto other = step;
  other[5].phase = Phase::kForward;
  EXPECT_NE(trace_hash(other), trace_hash(step));
  EXPECT_NE(trace_hash(fwd_bwd({0, 1})), trace_hash(fwd_bwd({0, 1, 0})));
  EXPECT_NE(trace_hash(std::vector<ModuleAccess>{{-1, Phase::kForward}}),
            trace_hash(std::vector<ModuleAccess>{{255, Phase::kForward}}));
}

// Note [overlapping accesses]: a step of E fwd, B fwd, B bwd, then B's recomputed
// forward inside its backward (activation checkpointing), then E bwd.
std::vector<long> run_overlapping_step(AccessTrace& t, bool bwd_ends_late) {
  std::vector<long> at;
  t.begin_step();
  auto access = [&](ModuleAccess a) {
    auto i = t.on_access(a);
    at.push_back(i ? static_cast<long>(*i) : -1);
    return t.index() - 1;
  };
  t.on_close(access({0, Phase::kForward}));
  t.on_close(access({1, Phase::kForward}));
  const std::size_t b_bwd = access({1, Phase::kBackward});
  if (!bwd_ends_late) t.on_close(b_bwd);
  t.on_close(access({1, Phase::kForward}));
  if (bwd_ends_late) t.on_close(b_bwd);
  access({0, Phase::kBackward});  // never closed: ends with the step
  t.end_step();
  return at;
}

TEST(Trace, RecordsWhereAccessesEnd) {
  AccessTrace t;
  run_overlapping_step(t, true);
  ASSERT_TRUE(t.complete());
  EXPECT_EQ(std::vector<std::uint32_t>(t.open_through().begin(), t.open_through().end()),
            (std::vector<std::uint32_t>{0, 1, 3, 3, 4}));
  EXPECT_EQ(std::vector<std::uint32_t>(t.close_order().begin(), t.close_order().end()),
            (std::vector<std::uint32_t>{0, 1, 3, 2, 4}));
  const std::uint64_t h = t.hash();
  // The same accesses ending one at a time hash as the sequence alone, as before ends
  // were recorded; overlapping ends hash differently.
  EXPECT_NE(h, trace_hash(t.accesses()));
  EXPECT_EQ(run_overlapping_step(t, true), (std::vector<long>{0, 1, 2, 3, 4}));
  EXPECT_EQ(t.n_warnings(), 0u);
  // B's backward ending before its recomputation: a mismatch, warned once, re-recorded.
  EXPECT_EQ(run_overlapping_step(t, false), (std::vector<long>{0, 1, 2, -1, -1}));  // on demand from there
  EXPECT_EQ(t.n_warnings(), 1u);
  EXPECT_NE(t.last_warning().find("access 2: expected it to end after access 3, got its end after access 2"),
            std::string::npos) << t.last_warning();
  run_overlapping_step(t, false);
  ASSERT_TRUE(t.complete());
  EXPECT_EQ(t.hash(), trace_hash(t.accesses()));
  EXPECT_NE(t.hash(), h);
}

TEST(Trace, EmptyStepKeepsRecording) {
  AccessTrace t;
  t.begin_step();
  t.end_step();
  EXPECT_EQ(t.state(), AccessTrace::State::kRecord);
  run_step(t, fwd_bwd({5}));
  EXPECT_TRUE(t.complete());
  EXPECT_EQ(t.step(), 2u);
}

}  // namespace
}  // namespace strata::plan
