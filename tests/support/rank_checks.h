// gtest checks on what run_ranks() returns (support/multirank.h, which the rank
// programs include too, stays free of gtest).
#pragma once

#include <vector>

#include <gtest/gtest.h>

#include "support/multirank.h"

namespace strata::testing {

// Every rank exited 0; otherwise the test fails here with every rank's output.
inline void expect_all_ok(const std::vector<RankResult>& rs) {
  for (const auto& r : rs) ASSERT_EQ(r.exit_code, 0) << all_output(rs);
}

}  // namespace strata::testing
