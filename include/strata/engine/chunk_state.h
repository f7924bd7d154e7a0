// The lifecycle of a gathered chunk, as a checked state machine (DESIGN §3, "Chunk states").
//
//   ChunkStateMachine s;                     // FREE
//   s.to(ChunkState::kHold);                 // gathered ahead of use (prefetch)
//   s.to(ChunkState::kCompute);              // a module runs with it
//   s.to(ChunkState::kHoldAfterFwd);         // the module returned
//   s.to(ChunkState::kFree);                 // released: storage freed
//
//   FREE              not gathered; only this rank's shard exists
//   HOLD              gathered (or gathering), not in use
//   COMPUTE           in use by at least one running module (nested or shared units
//                     count their uses; the chunk leaves COMPUTE when the last one ends)
//   HOLD_AFTER_FWD    gathered, used in this step's forward, not in use now
//   HOLD_AFTER_BWD    gathered, its module's backward has run; gradients may be pending
//   READY_FOR_REDUCE  every gradient of the chunk has been accumulated; the gradient
//                     buffer is being reduce-scattered (parameters may still be gathered)
// Every transition is checked against kAllowed; an illegal one is a bug in strata and
// asserts with both state names.
#pragma once

#include <cstdint>
#include <string_view>

namespace strata::engine {

enum class ChunkState : std::uint8_t { kFree, kHold, kCompute, kHoldAfterFwd, kHoldAfterBwd, kReadyForReduce };
inline constexpr int kNumChunkStates = 6;
std::string_view to_string(ChunkState s);

// kAllowed[from][to]
bool transition_allowed(ChunkState from, ChunkState to);

class ChunkStateMachine {
 public:
  ChunkState state() const { return state_; }
  int users() const { return users_; }
  bool gathered() const { return state_ != ChunkState::kFree; }
  // Moves to `to`, asserting the transition is allowed. Same-state moves are no-ops.
  void to(ChunkState to);
  // A module starts / ends using the chunk (nesting-aware): the first use enters
  // COMPUTE, the last end leaves it for `after`.
  void begin_use();
  void end_use(ChunkState after);

 private:
  ChunkState state_ = ChunkState::kFree;
  int users_ = 0;
};

}  // namespace strata::engine
