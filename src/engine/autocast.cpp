#include "strata/engine/autocast.h"

#include <ATen/autocast_mode.h>

#include "strata/comm/torch_compat.h"

namespace strata::engine {

AutocastGuard::AutocastGuard(c10::DeviceType device, c10::ScalarType dtype, bool cache)
    : device_(device),
      was_enabled_(torch_compat::autocast_enabled(device)),
      was_dtype_(torch_compat::autocast_dtype(device)),
      was_cache_(at::autocast::is_autocast_cache_enabled()) {
  torch_compat::set_autocast_enabled(device, true);
  torch_compat::set_autocast_dtype(device, dtype);
  at::autocast::set_autocast_cache_enabled(cache);
  at::autocast::increment_nesting();
}

AutocastGuard::~AutocastGuard() {
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  torch_compat::set_autocast_enabled(device_, was_enabled_);
  torch_compat::set_autocast_dtype(device_, was_dtype_);
  at::autocast::set_autocast_cache_enabled(was_cache_);
}

// Note [autocast cache at stage 3]: autocast keeps the bf16 cast of every fp32 leaf
// parameter a forward used until the outermost autocast ends, to reuse it when the
// parameter is used again. At stage 3 the parameters are gathered one unit at a time
// within a compute budget; the cache would hold a bf16 copy of every parameter of the
// model by the forward's end, outside that budget (half of the fp32 model for a model
// that was sharded because it does not fit). So at stage 3 each use casts afresh, which
// costs only the parameters used twice in a forward (tied weights) a second cast.
std::optional<AutocastGuard> forward_autocast(const Config& cfg, c10::DeviceType device) {
  if (!cfg.torch_autocast.enabled) return std::nullopt;
  return std::optional<AutocastGuard>(std::in_place, device, c10::ScalarType::BFloat16,
                                      /*cache=*/cfg.zero_optimization.stage != 3);
}

}  // namespace strata::engine
