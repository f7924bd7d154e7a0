// NCCL next to Gloo in the group strata's rendezvous builds, for collectives on CUDA
// tensors. Compiled only with STRATA_CUDA (a LibTorch built with CUDA). Internal to
// src/comm.
#pragma once

#include <chrono>

#include <c10/util/intrusive_ptr.h>

#include "strata/base/status.h"

namespace c10d {
class ProcessGroup;
class Store;
}  // namespace c10d

namespace strata::comm::detail {

// When a GPU is visible: makes this rank's GPU (local_rank modulo the GPUs visible)
// current and adds a NCCL backend for CUDA tensors to `pg`, whose CPU backend is Gloo.
// Without a GPU it does nothing: the group stays Gloo only. The NCCL backend keeps
// its keys under "cuda/" in `store`, as torch.distributed does. NCCL connects on its
// first collective, so a failure to meet the peers shows there, as that op's error.
Status add_nccl_backend(c10d::ProcessGroup& pg, const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                        int local_rank, std::chrono::milliseconds timeout);

}  // namespace strata::comm::detail
