#include "hook_errors.h"

#include <c10/util/Exception.h>

namespace strata::engine {

void HookErrors::raise(Error e) {
  const std::string text = e.to_string();
  {
    std::lock_guard lock(mu_);
    if (!first_) first_ = std::move(e);
  }
  TORCH_CHECK(false, text);
}

std::optional<Error> HookErrors::take() {
  std::lock_guard lock(mu_);
  return std::exchange(first_, std::nullopt);
}

}  // namespace strata::engine
