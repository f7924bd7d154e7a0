// The CUDA half of detect_device(), compiled only with STRATA_CUDA. Internal to src/tiers.
#pragma once

#include "strata/tiers/device.h"

namespace strata::tiers::detail {

// The CUDA runtime, driver and NCCL versions, and each GPU's name, capability and memory.
// A failing CUDA call is reported in the field it would fill, never thrown.
void fill_cuda_info(DeviceInfo& d);

// cudaHostRegister and cudaHostUnregister as io::PinHooks (pin_hooks_for).
io::PinHooks cuda_pin_hooks();

}  // namespace strata::tiers::detail
