// C++ errors as Python exceptions: every strata::Error that reaches Python is raised as
// the strata.errors class for its code (ConfigError, CannotFitError, StrataIOError,
// PeerError, ... all StrataError), with the error's full text as the message.
#pragma once

#include <utility>

#include "strata/base/status.h"

namespace strata::python {

// Thrown by the bindings, translated by the handler register_errors() installs.
struct PyStrataError {
  Error error;
};

void register_errors();

// The value, or a PyStrataError.
template <class T>
T value_or_throw(Result<T> r) {
  if (!r) throw PyStrataError{std::move(r).error()};
  return std::move(*r);
}
inline void ok_or_throw(Status s) {
  if (!s) throw PyStrataError{std::move(s).error()};
}

}  // namespace strata::python
