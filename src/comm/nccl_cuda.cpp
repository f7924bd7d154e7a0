// Compiled only with STRATA_CUDA: see nccl_cuda.h.
#include "nccl_cuda.h"

#include <exception>

#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "strata/comm/torch_compat.h"

namespace strata::comm::detail {

Status add_nccl_backend(c10d::ProcessGroup& pg, const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                        int local_rank, std::chrono::milliseconds timeout) {
#if STRATA_TORCH_AT_LEAST(2, 0)
  try {
    const int gpus = c10::cuda::device_count();
    if (gpus == 0) return ok();
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(local_rank % gpus));
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(c10::make_intrusive<c10d::PrefixStore>("cuda/", store),
                                                            rank, size, opts);
    torch_compat::add_backend(pg, std::move(nccl), c10::DeviceType::CUDA);
  } catch (const std::exception& e) {
    const std::string what = e.what();
    return make_error(ErrorCode::kUnavailable, "cannot create the NCCL backend: {}", what.substr(0, what.find('\n')))
        .with_rank(rank);
  }
  return ok();
#else
  // LibTorch 1.x groups have one backend each: CUDA tensors would need a group of
  // their own. No CUDA build of 1.x is supported (docs/gpu.md).
  (void)pg, (void)store, (void)rank, (void)size, (void)local_rank, (void)timeout;
  return make_error(ErrorCode::kUnimplemented, "NCCL next to Gloo needs LibTorch 2.x; this is {}", TORCH_VERSION);
#endif
}

}  // namespace strata::comm::detail
