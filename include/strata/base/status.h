// Status and Result<T>: strata's error values.
//
//   Result<Buffer> read_record(std::string_view key) {
//     STRATA_ASSIGN_OR_RETURN(auto rec, index.find(key));
//     STRATA_RETURN_IF_ERROR(engine.read(rec.file, rec.offset, buf));
//     return buf;
//   }
//   ...
//   if (auto r = read_record("m/3"); !r) log::error("{}", r.error());
//
// Failures a caller can expect (a full disk, a checksum mismatch, a collective timeout,
// a bad config value) travel as values. Broken internal invariants assert instead.
// An Error carries a code, a message, and optional context (path, offset, length, rank,
// op) so that the final message says where it happened without callers re-formatting.
#pragma once

#include <cstdint>
#include <expected>
#include <iosfwd>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

namespace strata {

enum class ErrorCode : std::uint8_t {
  kInvalidArgument,    // bad input from the caller or the config
  kNotFound,           // a key, file or record does not exist
  kOutOfRange,         // a value or offset outside its allowed range
  kIoError,            // EIO and other I/O failures
  kNoSpace,            // ENOSPC, or a reservation that the disk cannot back
  kDataLoss,           // checksum mismatch, truncated or stale data
  kTimeout,            // a wait exceeded its deadline
  kResourceExhausted,  // a tier or pool budget cannot be met
  kFailedPrecondition, // the object is not in a state that allows the call
  kUnavailable,        // a peer or a backend is gone or not supported here
  kUnimplemented,      // a recognised feature that strata does not do yet
  kInternal,           // a bug surfaced as a value, e.g. from a callback
};

std::string_view to_string(ErrorCode code);

// Where an error happened. Every field is optional; to_string() prints the set ones.
struct ErrorContext {
  std::optional<std::string> path;
  std::optional<std::uint64_t> offset;
  std::optional<std::uint64_t> length;
  std::optional<int> rank;
  std::optional<std::string> op;
};

class Error {
 public:
  Error(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}

  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }
  const ErrorContext& context() const { return ctx_; }

  // Builders, so a call site can say `return std::move(err).with_path(p).with_offset(o);`.
  Error& with_path(std::string path) & { ctx_.path = std::move(path); return *this; }
  Error& with_offset(std::uint64_t o) & { ctx_.offset = o; return *this; }
  Error& with_length(std::uint64_t n) & { ctx_.length = n; return *this; }
  Error& with_rank(int r) & { ctx_.rank = r; return *this; }
  Error& with_op(std::string op) & { ctx_.op = std::move(op); return *this; }
  // Prepends "what: " to the message, for callers that add a layer of meaning.
  Error& with_note(std::string_view what) &;
  Error&& with_path(std::string path) && { return std::move(with_path(std::move(path))); }
  Error&& with_offset(std::uint64_t o) && { return std::move(with_offset(o)); }
  Error&& with_length(std::uint64_t n) && { return std::move(with_length(n)); }
  Error&& with_rank(int r) && { return std::move(with_rank(r)); }
  Error&& with_op(std::string op) && { return std::move(with_op(std::move(op))); }
  Error&& with_note(std::string_view what) && { return std::move(with_note(what)); }

  // "io_error: short write [path=/x/rank0/optim.swp offset=4096 length=1048576]"
  std::string to_string() const;

 private:
  ErrorCode code_;
  std::string message_;
  ErrorContext ctx_;
};

// For test frameworks and iostream users; prints to_string().
std::ostream& operator<<(std::ostream& os, const Error& e);

using Status = std::expected<void, Error>;
template <class T>
using Result = std::expected<T, Error>;

inline Status ok() { return {}; }

// What make_error returns: a std::unexpected<Error> (so `return make_error(...)` works
// in any function returning Status or Result<T>) with the same context builders as
// Error, e.g. `return make_error(ErrorCode::kIoError, "short read").with_path(p);`.
class ErrorReturn : public std::unexpected<Error> {
 public:
  explicit ErrorReturn(Error e) : std::unexpected<Error>(std::move(e)) {}
  ErrorReturn&& with_path(std::string p) && { error().with_path(std::move(p)); return std::move(*this); }
  ErrorReturn&& with_offset(std::uint64_t o) && { error().with_offset(o); return std::move(*this); }
  ErrorReturn&& with_length(std::uint64_t n) && { error().with_length(n); return std::move(*this); }
  ErrorReturn&& with_rank(int r) && { error().with_rank(r); return std::move(*this); }
  ErrorReturn&& with_op(std::string op) && { error().with_op(std::move(op)); return std::move(*this); }
};

// make_error(ErrorCode::kInvalidArgument, "stage must be 0..3, got {}", s)
template <class... Args>
ErrorReturn make_error(ErrorCode code, fmt::format_string<Args...> fmt, Args&&... args) {
  return ErrorReturn(Error(code, fmt::format(fmt, std::forward<Args>(args)...)));
}
inline ErrorReturn make_error(Error e) { return ErrorReturn(std::move(e)); }

// errno -> ErrorCode, for I/O paths: ENOSPC -> kNoSpace, ETIMEDOUT -> kTimeout, ...
ErrorCode code_from_errno(int err);
// An Error for a failed system call, with strerror text: "pwrite: No space left on device".
Error errno_error(int err, std::string_view what);

}  // namespace strata

template <>
struct fmt::formatter<strata::Error> : fmt::formatter<std::string_view> {
  auto format(const strata::Error& e, fmt::format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(e.to_string(), ctx);
  }
};

#define STRATA_CONCAT_INNER_(a, b) a##b
#define STRATA_CONCAT_(a, b) STRATA_CONCAT_INNER_(a, b)

// Returns the error of `expr` (a Status or Result) from the enclosing function.
#define STRATA_RETURN_IF_ERROR(expr)                                 \
  do {                                                               \
    auto&& strata_status_ = (expr);                                  \
    if (!strata_status_) [[unlikely]]                                \
      return std::unexpected<::strata::Error>(                       \
          std::move(strata_status_).error());                        \
  } while (0)

// Declares or assigns `lhs` from the value of the Result `expr`, or returns its error.
#define STRATA_ASSIGN_OR_RETURN(lhs, expr) \
  STRATA_ASSIGN_OR_RETURN_IMPL_(STRATA_CONCAT_(strata_result_, __LINE__), lhs, expr)
#define STRATA_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr)                                  \
  auto tmp = (expr);                                                                   \
  if (!tmp) [[unlikely]] return std::unexpected<::strata::Error>(std::move(tmp).error()); \
  lhs = std::move(tmp).value()
