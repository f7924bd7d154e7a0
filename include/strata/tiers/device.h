// The compute device strata runs on, and what LibTorch offers.
//
//   auto d = strata::tiers::detect_device();
//   fmt::print("torch {} on {}\n", d.torch_version, d.compute.str());
//   for (const auto& g : d.gpus) fmt::print("{}: {} bytes\n", g.name, g.total_bytes);
//
// On a CPU-only machine the compute tier is host memory (DESIGN §3, "Tiers"). The GPU
// details (each GPU, the CUDA runtime, driver and NCCL versions) are filled in only by a
// build with the GPU compute tier (STRATA_CUDA: a LibTorch built with CUDA).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "strata/io/buffer_pool.h"

namespace strata::tiers {

struct GpuInfo {
  std::string name;                  // "NVIDIA H200"
  int capability_major = 0, capability_minor = 0;
  int multiprocessors = 0;
  std::uint64_t total_bytes = 0;
  std::uint64_t free_bytes = 0;      // when detected, with other processes' use taken off
};

struct DeviceInfo {
  std::string torch_version;  // "1.13.1"
  bool built_with_cuda = false;  // strata's GPU compute tier is compiled in (STRATA_CUDA)
  bool cuda_available = false;
  int cuda_device_count = 0;
  c10::Device compute{c10::kCPU};  // where gathered parameters and activations live
  // Host buffers are pinned only when CUDA is present: pinning throws on CPU builds.
  bool can_pin_memory = false;
  // Filled in by a STRATA_CUDA build: "13.0", "13.0" and "2.27.7", or why not.
  std::string cuda_runtime, cuda_driver, nccl;
  std::vector<GpuInfo> gpus;
};

DeviceInfo detect_device();

// "major.minor.patch" of a version as LibTorch's torch::cuda::nccl::version() packs it:
// major << 32 | minor << 16 | patch (2.28.9 was 8591769609 on the H200, issue 19).
std::string nccl_version_string(std::uint64_t packed);

// The device a rank computes on: the CPU, or for CUDA the GPU local_rank modulo the GPUs
// visible (the one the rendezvous makes current for NCCL).
c10::Device rank_device(c10::DeviceType type, int local_rank);

// Hooks that page-lock an io::BufferPool's arena for copies to and from `compute`
// (cudaHostRegister in a STRATA_CUDA build, Note [pinned host tensors] in
// src/engine/io_tensor.h). Empty for the CPU, and in a build without the GPU tier:
// nothing is pinned there.
io::PinHooks pin_hooks_for(c10::Device compute);

}  // namespace strata::tiers
