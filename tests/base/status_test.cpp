#include "strata/base/status.h"

#include <cerrno>

#include <gtest/gtest.h>

namespace strata {
namespace {

Result<int> parse_positive(int v) {
  if (v <= 0) return make_error(ErrorCode::kOutOfRange, "value {} must be positive", v).with_op("parse");
  return v;
}

Result<int> doubled(int v) {
  STRATA_ASSIGN_OR_RETURN(int x, parse_positive(v));
  return 2 * x;
}

Status check_both(int a, int b) {
  STRATA_RETURN_IF_ERROR(parse_positive(a));
  STRATA_RETURN_IF_ERROR(parse_positive(b));
  return ok();
}

TEST(Status, AssignOrReturnPassesValuesAndErrors) {
  EXPECT_EQ(doubled(21).value(), 42);
  auto bad = doubled(-1);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(bad.error().message(), "value -1 must be positive");
  EXPECT_EQ(bad.error().context().op, "parse");
}

TEST(Status, ReturnIfErrorStopsAtFirstFailure) {
  EXPECT_TRUE(check_both(1, 2));
  auto st = check_both(1, -7);
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message().find("-7"), std::string::npos);
}

TEST(Status, ContextAppearsInToString) {
  Error e = Error(ErrorCode::kIoError, "short write").with_path("/d/rank0/optim.swp").with_offset(4096).with_length(1 << 20).with_rank(3);
  EXPECT_EQ(e.to_string(), "io_error: short write [path=/d/rank0/optim.swp offset=4096 length=1048576 rank=3]");
  e.with_note("swapping out m");
  EXPECT_EQ(e.message(), "swapping out m: short write");
  EXPECT_EQ(fmt::format("{}", Error(ErrorCode::kTimeout, "x")), "timeout: x");
}

TEST(Status, ErrnoMapping) {
  EXPECT_EQ(code_from_errno(ENOSPC), ErrorCode::kNoSpace);
  EXPECT_EQ(code_from_errno(EIO), ErrorCode::kIoError);
  EXPECT_EQ(code_from_errno(ENOENT), ErrorCode::kNotFound);
  Error e = errno_error(ENOSPC, "fallocate");
  EXPECT_EQ(e.code(), ErrorCode::kNoSpace);
  EXPECT_EQ(e.message(), "fallocate: No space left on device");
}

}  // namespace
}  // namespace strata
