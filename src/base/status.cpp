#include "strata/base/status.h"

#include <cerrno>
#include <cstring>
#include <ostream>

namespace strata {

std::string_view to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid_argument";
    case ErrorCode::kNotFound: return "not_found";
    case ErrorCode::kOutOfRange: return "out_of_range";
    case ErrorCode::kIoError: return "io_error";
    case ErrorCode::kNoSpace: return "no_space";
    case ErrorCode::kDataLoss: return "data_loss";
    case ErrorCode::kTimeout: return "timeout";
    case ErrorCode::kResourceExhausted: return "resource_exhausted";
    case ErrorCode::kFailedPrecondition: return "failed_precondition";
    case ErrorCode::kUnavailable: return "unavailable";
    case ErrorCode::kUnimplemented: return "unimplemented";
    case ErrorCode::kInternal: return "internal";
  }
  return "unknown";
}

Error& Error::with_note(std::string_view what) & {
  message_ = fmt::format("{}: {}", what, message_);
  return *this;
}

std::string Error::to_string() const {
  std::string out = fmt::format("{}: {}", strata::to_string(code_), message_);
  std::string ctx;
  auto add = [&ctx](std::string_view key, const auto& value) {
    if (!ctx.empty()) ctx += ' ';
    ctx += fmt::format("{}={}", key, value);
  };
  if (ctx_.op) add("op", *ctx_.op);
  if (ctx_.path) add("path", *ctx_.path);
  if (ctx_.offset) add("offset", *ctx_.offset);
  if (ctx_.length) add("length", *ctx_.length);
  if (ctx_.rank) add("rank", *ctx_.rank);
  if (!ctx.empty()) out += fmt::format(" [{}]", ctx);
  return out;
}

std::ostream& operator<<(std::ostream& os, const Error& e) { return os << e.to_string(); }

ErrorCode code_from_errno(int err) {
  switch (err) {
    case ENOSPC:
    case EDQUOT:
    case EFBIG: return ErrorCode::kNoSpace;
    case ENOENT: return ErrorCode::kNotFound;
    case ETIMEDOUT: return ErrorCode::kTimeout;
    case EINVAL: return ErrorCode::kInvalidArgument;
    case ENOMEM: return ErrorCode::kResourceExhausted;
    case ENOSYS:
    case EOPNOTSUPP: return ErrorCode::kUnavailable;
    default: return ErrorCode::kIoError;
  }
}

Error errno_error(int err, std::string_view what) {
  return Error(code_from_errno(err), fmt::format("{}: {}", what, std::strerror(err)));
}

}  // namespace strata
