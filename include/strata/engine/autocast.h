// AutocastGuard: a forward under PyTorch's automatic mixed precision (config block
// torch_autocast), the C++ counterpart of Python's `with torch.autocast(...)`.
//
//   auto guard = engine::forward_autocast(cfg, c10::DeviceType::CPU);  // engaged when enabled
//   at::Tensor loss = model->loss(x, y);                                // matmuls in bf16
//
// While it lives, ATen's autocast is on for one device type with the given dtype; its end
// puts back the state it found, and the outermost guard empties the cast cache, as
// torch.autocast's exit does.
#pragma once

#include <optional>

#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include "strata/base/config.h"

namespace strata::engine {

class AutocastGuard {
 public:
  // `cache`: whether casts of leaf parameters are kept for reuse until the outermost
  // guard ends (torch.autocast's cache_enabled).
  AutocastGuard(c10::DeviceType device, c10::ScalarType dtype, bool cache = true);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  c10::DeviceType device_;
  bool was_enabled_;
  c10::ScalarType was_dtype_;
  bool was_cache_;
};

// The forward's guard for a config: engaged when torch_autocast.enabled, with its dtype
// (validated: bf16). Note [autocast cache at stage 3]: the cast cache is off at stage 3.
std::optional<AutocastGuard> forward_autocast(const Config& cfg, c10::DeviceType device);

}  // namespace strata::engine
