// The out-of-line parts of torch_compat.h: ATen's autocast switches.
#include "strata/comm/torch_compat.h"

#include <stdexcept>

#include <ATen/autocast_mode.h>

namespace strata::torch_compat {
namespace {

void check_device(c10::DeviceType device) {
  if (device != c10::DeviceType::CPU && device != c10::DeviceType::CUDA)
    throw std::invalid_argument("autocast: only CPU and CUDA devices are supported");
}

}  // namespace

#if STRATA_TORCH_AT_LEAST(2, 4)

bool autocast_enabled(c10::DeviceType device) {
  check_device(device);
  return at::autocast::is_autocast_enabled(device);
}
void set_autocast_enabled(c10::DeviceType device, bool enabled) {
  check_device(device);
  at::autocast::set_autocast_enabled(device, enabled);
}
c10::ScalarType autocast_dtype(c10::DeviceType device) {
  check_device(device);
  return at::autocast::get_autocast_dtype(device);
}
void set_autocast_dtype(c10::DeviceType device, c10::ScalarType dtype) {
  check_device(device);
  at::autocast::set_autocast_dtype(device, dtype);
}

#else

bool autocast_enabled(c10::DeviceType device) {
  check_device(device);
  return device == c10::DeviceType::CPU ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled();
}
void set_autocast_enabled(c10::DeviceType device, bool enabled) {
  check_device(device);
  device == c10::DeviceType::CPU ? at::autocast::set_cpu_enabled(enabled) : at::autocast::set_enabled(enabled);
}
c10::ScalarType autocast_dtype(c10::DeviceType device) {
  check_device(device);
  return device == c10::DeviceType::CPU ? at::autocast::get_autocast_cpu_dtype()
                                        : at::autocast::get_autocast_gpu_dtype();
}
void set_autocast_dtype(c10::DeviceType device, c10::ScalarType dtype) {
  check_device(device);
  device == c10::DeviceType::CPU ? at::autocast::set_autocast_cpu_dtype(dtype)
                                 : at::autocast::set_autocast_gpu_dtype(dtype);
}

#endif

}  // namespace strata::torch_compat
