#include "strata/tiers/device.h"

#include <algorithm>

#include <fmt/format.h>

#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/version.h>

#ifdef STRATA_CUDA
#include "device_cuda.h"
#endif

namespace strata::tiers {

DeviceInfo detect_device() {
  DeviceInfo d;
  d.torch_version = TORCH_VERSION;
  d.cuda_available = at::hasCUDA();
  // at::hasCUDA() says the CUDA runtime is linked; device count says a GPU is present.
  d.cuda_device_count = d.cuda_available ? static_cast<int>(at::detail::getCUDAHooks().getNumGPUs()) : 0;
  if (d.cuda_device_count > 0) d.compute = c10::Device(c10::kCUDA, 0);
  d.can_pin_memory = d.cuda_device_count > 0;
#ifdef STRATA_CUDA
  d.built_with_cuda = true;
  detail::fill_cuda_info(d);
#endif
  return d;
}

std::string nccl_version_string(std::uint64_t packed) {
  return fmt::format("{}.{}.{}", packed >> 32, (packed >> 16) & 0xFFFF, packed & 0xFFFF);
}

c10::Device rank_device(c10::DeviceType type, int local_rank) {
  if (type == c10::DeviceType::CPU) return c10::Device(c10::kCPU);
  const int gpus = std::max(1, detect_device().cuda_device_count);
  return c10::Device(type, static_cast<c10::DeviceIndex>(local_rank % gpus));
}

io::PinHooks pin_hooks_for(c10::Device compute) {
#ifdef STRATA_CUDA
  if (compute.is_cuda()) return detail::cuda_pin_hooks();
#endif
  (void)compute;
  return {};
}

}  // namespace strata::tiers
