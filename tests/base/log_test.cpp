#include "strata/base/log.h"

#include <unistd.h>

#include <cstdio>
#include <string>

#include <gtest/gtest.h>

namespace strata::log {
namespace {

// Captures what log lines write to stderr.
std::string capture(const std::function<void()>& fn) {
  ::testing::internal::CaptureStderr();
  fn();
  return ::testing::internal::GetCapturedStderr();
}

TEST(Log, ParsesLevelNames) {
  Level l{};
  EXPECT_TRUE(parse_level("DEBUG", &l));
  EXPECT_EQ(l, Level::kDebug);
  EXPECT_TRUE(parse_level("warning", &l));
  EXPECT_EQ(l, Level::kWarn);
  EXPECT_FALSE(parse_level("loud", &l));
}

TEST(Log, PrefixesRankAndFiltersByLevel) {
  set_level(Level::kInfo);
  set_rank(3);
  EXPECT_EQ(capture([] { info("gathered {} chunks", 4); }), "[strata r3 I] gathered 4 chunks\n");
  EXPECT_EQ(capture([] { debug("hidden"); }), "");
  set_rank(-1);
  EXPECT_EQ(capture([] { warn("careful"); }), "[strata W] careful\n");
  set_level(Level::kOff);
  EXPECT_EQ(capture([] { error("nothing"); }), "");
  set_level(Level::kInfo);
}

}  // namespace
}  // namespace strata::log
