#include "strata/engine/chunk_state.h"

#include <c10/util/Exception.h>
#include <gtest/gtest.h>

namespace strata::engine {
namespace {

using S = ChunkState;

TEST(ChunkState, ForwardThenBackwardLifecycle) {
  ChunkStateMachine m;
  EXPECT_FALSE(m.gathered());
  m.to(S::kHold);  // prefetched
  m.begin_use();
  EXPECT_EQ(m.state(), S::kCompute);
  m.begin_use();  // a nested unit
  m.end_use(S::kHoldAfterFwd);
  EXPECT_EQ(m.state(), S::kCompute);  // the outer one still runs
  m.end_use(S::kHoldAfterFwd);
  EXPECT_EQ(m.state(), S::kHoldAfterFwd);
  m.to(S::kFree);
  m.begin_use();  // re-gathered for backward
  m.end_use(S::kHoldAfterBwd);
  m.to(S::kReadyForReduce);
  m.to(S::kHoldAfterBwd);
  m.to(S::kFree);
  EXPECT_FALSE(m.gathered());
}

TEST(ChunkState, IllegalTransitionsAreRejected) {
  EXPECT_FALSE(transition_allowed(S::kFree, S::kHoldAfterFwd));
  EXPECT_FALSE(transition_allowed(S::kFree, S::kReadyForReduce));
  EXPECT_FALSE(transition_allowed(S::kCompute, S::kFree));  // never free a chunk in use
  EXPECT_FALSE(transition_allowed(S::kHold, S::kHoldAfterBwd));
  ChunkStateMachine m;
  EXPECT_THROW(m.to(S::kHoldAfterBwd), c10::Error);
  ChunkStateMachine n;
  n.begin_use();
  EXPECT_THROW(n.to(S::kFree), c10::Error);
  ChunkStateMachine u;
  EXPECT_THROW(u.end_use(S::kHold), c10::Error);  // more ends than begins
}

TEST(ChunkState, EveryStateHasAName) {
  for (int s = 0; s < kNumChunkStates; ++s) EXPECT_NE(to_string(static_cast<S>(s)), "?");
}

}  // namespace
}  // namespace strata::engine
