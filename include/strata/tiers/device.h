// The compute device strata runs on, and what LibTorch offers.
//
//   auto d = strata::tiers::detect_device();
//   fmt::print("torch {} on {}\n", d.torch_version, d.compute.str());
//
// On a CPU-only machine the compute tier is host memory (DESIGN §3, "Tiers").
#pragma once

#include <string>

#include <c10/core/Device.h>

namespace strata::tiers {

struct DeviceInfo {
  std::string torch_version;  // "1.13.1"
  bool cuda_available = false;
  int cuda_device_count = 0;
  c10::Device compute{c10::kCPU};  // where gathered parameters and activations live
  // Host buffers are pinned only when CUDA is present: pinning throws on CPU builds.
  bool can_pin_memory = false;
};

DeviceInfo detect_device();

}  // namespace strata::tiers
