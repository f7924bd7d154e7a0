// The access trace: the order in which modules run over one training step.
//
//   plan::AccessTrace trace;
//   for (int step = 0; step < n_steps; ++step) {
//     trace.begin_step();
//     for (auto [module, phase] : modules_as_they_run) {
//       std::optional<std::size_t> at = trace.on_access({module, phase});
//       if (at) run_schedule_ops(*at);   // the frozen trace matched: prefetch by schedule
//       else fetch_on_demand(module);    // recording, or the trace was invalidated
//     }
//     trace.end_step();                  // after step 1: COMPLETE, hash() is defined
//   }
//   comm.check_equal_across_ranks(trace.hash());
//
// States (DESIGN.md §3 "Trace"):
//   RECORD   the first step appends every access; end_step() freezes it -> COMPLETE.
//   COMPLETE each access is checked against the frozen trace at the same index. A
//            mismatch (other module, other phase, an access past the end, or a step that
//            ends early) -> INVALID with exactly one warning naming the step, the access
//            index, the expected and the actual access (counted; logged at the 1st,
//            2nd, 4th, 8th, ... mismatch: Note [mismatches logged] in trace.cpp).
//   INVALID  accesses are ignored for the rest of the step; the next begin_step()
//            records again from scratch.
// Invariant: hash() depends only on the frozen sequence, never on the process: it is an
// XXH3-64 of a fixed little-endian encoding, so every rank, process and run agrees.
//
// Note [overlapping accesses]: an access does not always end before the next begins. An
// enclosing module's forward is open while its children run; a backward stays open while
// modules nested in it run (Note [nested backward] in src/engine/access_driver.h); and
// under activation checkpointing a module's backward recomputes the forward of the
// modules it checkpointed before its own gradient is done, so those forward accesses
// run inside it. The trace records when each access ends (on_close): its open_through()
// is the last access begun before it ended (its own index when nothing overlapped it),
// and close_order() lists the accesses in the order they ended. Both are part of the
// frozen trace: a later step whose accesses end elsewhere is a mismatch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace strata::plan {

enum class Phase : std::uint8_t { kForward = 0, kBackward = 1 };
std::string_view to_string(Phase p);  // "fwd", "bwd"

struct ModuleAccess {
  int module_id = 0;
  Phase phase = Phase::kForward;
  bool operator==(const ModuleAccess&) const = default;
};

// "module 7 (fwd)"
std::string describe(const ModuleAccess& a);

// Stable 64-bit hash of a sequence of accesses (see the invariant above), and of where
// they end when that is not right after each one (Note [overlapping accesses]; empty
// spans, or accesses that each end before the next begins, hash as the sequence alone).
std::uint64_t trace_hash(std::span<const ModuleAccess> accesses, std::span<const std::uint32_t> open_through = {},
                         std::span<const std::uint32_t> close_order = {});

class AccessTrace {
 public:
  enum class State : std::uint8_t { kRecord, kComplete, kInvalid };

  // Starts a training step. RECORD: (re)starts recording; COMPLETE: rewinds to access 0;
  // INVALID: forgets the old trace and records again.
  void begin_step();
  // One module access in the current step. Returns its index into the frozen trace when
  // the trace is COMPLETE and the access matches; nullopt while recording or invalid.
  std::optional<std::size_t> on_access(ModuleAccess a);
  // Access `at` (its index in this step: index() - 1 right after its on_access) ends.
  // RECORD: records where (Note [overlapping accesses]). COMPLETE: returns false, and
  // invalidates like a mismatched access, when it ends elsewhere than in the frozen trace.
  bool on_close(std::size_t at);
  // Ends the step. RECORD: freezes the trace (COMPLETE) if it recorded anything.
  // COMPLETE: a step that stopped before the end of the trace is a mismatch.
  void end_step();
  // The frozen trace no longer describes the model (a unit took a parameter it did not
  // hold when the trace was recorded: Note [adopted parameters] in
  // src/engine/access_driver.h): the rest of this step is ignored, as INVALID, and the
  // next step records again. No warning: nothing mismatched.
  void rerecord();

  State state() const { return state_; }
  bool complete() const { return state_ == State::kComplete; }
  // The frozen (or, while recording, partial) sequence.
  std::span<const ModuleAccess> accesses() const { return accesses_; }
  // Per access, the last access begun before it ended; the accesses in the order they
  // ended (an access that never ended counts as ending with the step, innermost first).
  std::span<const std::uint32_t> open_through() const { return open_through_; }
  std::span<const std::uint32_t> close_order() const { return close_order_; }
  // Hash of accesses() and where they end; compare across ranks once complete().
  std::uint64_t hash() const { return trace_hash(accesses_, open_through_, close_order_); }
  // Steps begun so far (the first step is 1) and accesses seen in the current step.
  std::size_t step() const { return step_; }
  std::size_t index() const { return index_; }
  // Warnings emitted (one per invalidated step) and the last one's text.
  std::size_t n_warnings() const { return n_warnings_; }
  // How many of them went to the log (Note [mismatches logged], trace.cpp).
  std::size_t n_logged() const { return n_logged_; }
  const std::string& last_warning() const { return last_warning_; }

 private:
  void invalidate(std::size_t at, const std::string& expected, const std::string& actual);

  State state_ = State::kRecord;
  std::vector<ModuleAccess> accesses_;
  std::vector<std::uint32_t> open_through_, close_order_;
  std::vector<bool> closed_;  // this step's accesses that ended
  std::size_t step_ = 0;
  std::size_t index_ = 0;
  std::size_t n_closed_ = 0;
  std::size_t n_warnings_ = 0;
  std::size_t n_logged_ = 0;
  std::string last_warning_;
};

}  // namespace strata::plan
