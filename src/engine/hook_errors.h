// HookErrors: carries a typed Error out of code that cannot return one. Internal to
// src/engine.
//
// Autograd hooks and callbacks can only throw; LibTorch turns what they throw into a
// c10::Error whose text is all that reaches backward()'s caller. As c10d's
// Work::exception() keeps the exception a worker thread raised, the engine keeps the
// first Error a hook raised and backward() returns it, code and context intact:
//
//   errors.raise(make_error(...).error());     // in a hook: records, then throws
//   ...
//   try { loss.backward(); } catch (...) { if (auto e = errors.take()) return make_error(*e); ... }
#pragma once

#include <mutex>
#include <optional>

#include "strata/base/status.h"

namespace strata::engine {

class HookErrors {
 public:
  // Records `e` (the first one wins: later ones are consequences) and throws a
  // c10::Error with its text, which unwinds autograd.
  [[noreturn]] void raise(Error e);
  // Unwraps a Status in a hook: raises its error, if any.
  void check(const Status& st) {
    if (!st) raise(st.error());
  }
  // The recorded Error, if any, cleared.
  std::optional<Error> take();

 private:
  std::mutex mu_;
  std::optional<Error> first_;
};

}  // namespace strata::engine
