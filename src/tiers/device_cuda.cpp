// Compiled only with STRATA_CUDA (a LibTorch built with CUDA): see device_cuda.h.
#include "device_cuda.h"

#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <torch/csrc/cuda/nccl.h>

namespace strata::tiers::detail {
namespace {

// CUDA packs versions as 1000 * major + 10 * minor.
std::string cuda_version(int v) { return fmt::format("{}.{}", v / 1000, (v % 1000) / 10); }

std::string failed(const char* call, cudaError_t e) { return fmt::format("unknown ({}: {})", call, cudaGetErrorString(e)); }

}  // namespace

void fill_cuda_info(DeviceInfo& d) {
  int v = 0;
  cudaError_t e = cudaRuntimeGetVersion(&v);
  d.cuda_runtime = e == cudaSuccess ? cuda_version(v) : failed("cudaRuntimeGetVersion", e);
  e = cudaDriverGetVersion(&v);
  d.cuda_driver = e == cudaSuccess ? (v == 0 ? "none (no driver)" : cuda_version(v)) : failed("cudaDriverGetVersion", e);
  try {
    d.nccl = nccl_version_string(torch::cuda::nccl::version());
  } catch (const std::exception& ex) {
    d.nccl = fmt::format("unknown ({})", ex.what());
  }
  for (int i = 0; i < d.cuda_device_count; ++i) {
    GpuInfo g;
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) == cudaSuccess) {
      g.name = p.name;
      g.capability_major = p.major;
      g.capability_minor = p.minor;
      g.multiprocessors = p.multiProcessorCount;
      g.total_bytes = p.totalGlobalMem;
    }
    int current = 0;
    std::size_t free_bytes = 0, total_bytes = 0;
    if (cudaGetDevice(&current) == cudaSuccess && cudaSetDevice(i) == cudaSuccess &&
        cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      g.free_bytes = free_bytes;
    }
    (void)cudaSetDevice(current);
    d.gpus.push_back(std::move(g));
  }
}

io::PinHooks cuda_pin_hooks() {
  return {.pin = [](void*, std::byte* data, std::size_t bytes) -> Status {
            // Portable: any device may copy from it, not only the current one.
            if (const cudaError_t e = cudaHostRegister(data, bytes, cudaHostRegisterPortable); e != cudaSuccess) {
              return make_error(ErrorCode::kResourceExhausted, "cudaHostRegister of {} bytes failed: {}", bytes,
                                cudaGetErrorString(e));
            }
            return ok();
          },
          .unpin = [](void*, std::byte* data, std::size_t) { (void)cudaHostUnregister(data); }};
}

}  // namespace strata::tiers::detail
