#include "strata/engine/chunk_state.h"

#include <c10/util/Exception.h>

namespace strata::engine {
namespace {

using S = ChunkState;
// Rows: from; columns: to (FREE, HOLD, COMPUTE, HOLD_AFTER_FWD, HOLD_AFTER_BWD, READY_FOR_REDUCE).
constexpr bool kAllowed[kNumChunkStates][kNumChunkStates] = {
    /* FREE             */ {false, true, true, false, false, false},
    /* HOLD             */ {true, false, true, false, false, false},
    /* COMPUTE          */ {false, false, false, true, true, true},
    /* HOLD_AFTER_FWD   */ {true, false, true, false, false, false},
    /* HOLD_AFTER_BWD   */ {true, false, true, false, false, true},
    /* READY_FOR_REDUCE */ {true, false, true, false, true, false},
};

}  // namespace

std::string_view to_string(ChunkState s) {
  switch (s) {
    case S::kFree: return "FREE";
    case S::kHold: return "HOLD";
    case S::kCompute: return "COMPUTE";
    case S::kHoldAfterFwd: return "HOLD_AFTER_FWD";
    case S::kHoldAfterBwd: return "HOLD_AFTER_BWD";
    case S::kReadyForReduce: return "READY_FOR_REDUCE";
  }
  return "?";
}

bool transition_allowed(ChunkState from, ChunkState to) {
  return kAllowed[static_cast<int>(from)][static_cast<int>(to)];
}

void ChunkStateMachine::to(ChunkState to) {
  if (to == state_) return;
  TORCH_INTERNAL_ASSERT(transition_allowed(state_, to), "illegal chunk transition ", to_string(state_), " -> ",
                        to_string(to));
  state_ = to;
}

void ChunkStateMachine::begin_use() {
  if (users_++ == 0) to(ChunkState::kCompute);
}

void ChunkStateMachine::end_use(ChunkState after) {
  TORCH_INTERNAL_ASSERT(users_ > 0, "chunk use ended more often than it began");
  if (--users_ == 0) to(after);
}

}  // namespace strata::engine
