// The LibTorch API differences strata meets between 1.13 (Debian 12, CPU, CI) and 2.x
// (the CUDA wheels), in one place, so the rest of the code has one source for both.
// docs/torch2-port.md says where each difference comes from. scripts/torch2-check
// compiles strata against 2.x headers here, without a GPU.
//
//   #include "strata/comm/torch_compat.h"
//   opt.state()[torch_compat::optim_state_key(p)]      // std::string (1.13) or void* (2.x)
//   pg = torch_compat::as_process_group(store, rank, world, gloo, c10::DeviceType::CPU);
//
// In comm, the lowest layer on LibTorch, so every torch layer above can include it and
// the torch-free core (base, kernels, io, plan) never sees it.
#pragma once

#include <cstddef>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <utility>

#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/version.h>

#define STRATA_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace c10d {
class Backend;
class Store;
}

namespace strata::torch_compat {

// torch::optim::Optimizer::state()'s key for parameter p: the TensorImpl's address, as
// a string in 1.13 and as the pointer itself in 2.x.
#if STRATA_TORCH_AT_LEAST(2, 0)
using OptimStateKey = void*;
inline OptimStateKey optim_state_key(const at::Tensor& p) { return p.unsafeGetTensorImpl(); }
#else
using OptimStateKey = std::string;
inline OptimStateKey optim_state_key(const at::Tensor& p) { return c10::guts::to_string(p.unsafeGetTensorImpl()); }
#endif

// Zeroes an optimizer's gradients and keeps them defined, as 1.13's zero_grad() did. 2.x
// defaults to set_to_none, after which a parameter without a gradient is skipped by
// torch::optim instead of stepped with a zero one; strata's kernels step it (weight decay
// and momentum still apply), so references in parity tests must zero, not drop. A
// template so that this header need not include torch/optim.
template <class Optimizer>
void zero_grad_keep(Optimizer& opt) {
#if STRATA_TORCH_AT_LEAST(2, 0)
  opt.zero_grad(/*set_to_none=*/false);
#else
  opt.zero_grad();
#endif
}

// Turns off c10d::TCPStoreOptions::useLibUV when the options have it and it is on;
// returns whether it did. 2.x has the field, on by default since 2.4, and a LibTorch
// built without libuv (Debian 13's 2.6) refuses a store that asks for it ("use_libuv
// was requested but PyTorch was build without libuv support"); 1.13 has no such field.
// A template so that this header need not include TCPStore.hpp.
template <class TcpStoreOptions>
bool tcp_store_without_libuv(TcpStoreOptions& options) {
  if constexpr (requires { options.useLibUV; }) {
    if (!options.useLibUV) return false;
    options.useLibUV = false;
    return true;
  } else {
    return false;
  }
}

// Blocks the host until a c10::Event has happened: c10::Event::synchronize() is 2.x
// only; 1.13 polls query().
template <class Event>
void synchronize_event(const Event& e) {
#if STRATA_TORCH_AT_LEAST(2, 6)
  e.synchronize();
#else
  while (!e.query()) std::this_thread::yield();
#endif
}

// c10::Allocator: allocate() is const in 1.13 and not in 2.x, which also made
// copy_data() pure virtual. A subclass writes
//   c10::DataPtr allocate(std::size_t n) STRATA_ALLOCATE_CONST override { ... }
//   STRATA_ALLOCATOR_COPY_DATA
#if STRATA_TORCH_AT_LEAST(2, 3)
#define STRATA_ALLOCATE_CONST
#define STRATA_ALLOCATOR_COPY_DATA \
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
#else
#define STRATA_ALLOCATE_CONST const
#define STRATA_ALLOCATOR_COPY_DATA
#endif

// A c10d backend (ProcessGroupGloo, ProcessGroupNCCL) as the c10d::ProcessGroup the
// communicator takes. In 1.13 a backend is a ProcessGroup; in 2.x it is a c10d::Backend
// that a ProcessGroup dispatches to by the tensors' device type, and the group's name is
// its default backend's, which must be set. `also` adds a second backend for a second
// device type (NCCL for CUDA next to Gloo for CPU): 2.x only; 1.13 has no mixed groups.
// Templates so that callers, which include the c10d headers, instantiate them and this
// header does not pull c10d in.
template <class PG, class B>
c10::intrusive_ptr<PG> as_process_group(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                        c10::intrusive_ptr<B> backend, c10::DeviceType device) {
#if STRATA_TORCH_AT_LEAST(2, 0)
  auto pg = c10::make_intrusive<PG>(store, rank, size);
  const auto type = PG::strToBackendType(backend->getBackendName());
  pg->setBackend(device, type, c10::intrusive_ptr<c10d::Backend>(std::move(backend)));
  pg->setDefaultBackend(type);
  return pg;
#else
  (void)store, (void)rank, (void)size, (void)device;
  return backend;
#endif
}

#if STRATA_TORCH_AT_LEAST(2, 0)
template <class PG, class B>
void add_backend(PG& pg, c10::intrusive_ptr<B> backend, c10::DeviceType device) {
  const auto type = PG::strToBackendType(backend->getBackendName());
  pg.setBackend(device, type, c10::intrusive_ptr<c10d::Backend>(std::move(backend)));
}
#endif

// The name of the backend that runs pg's collectives on `device`: a 2.x group made by
// torch.distributed with "cpu:gloo,cuda:nccl" is named after its default backend only.
// Falls back to the group's name when it has no backend for that device.
template <class PG>
std::string backend_name_for(PG& pg, c10::DeviceType device) {
#if STRATA_TORCH_AT_LEAST(2, 0)
  try {
    if (auto b = pg.getBackend(device)) return b->getBackendName();
  } catch (const std::exception&) {
  }
#else
  (void)device;
#endif
  return pg.getBackendName();
}

// ATen's autocast switches for one device type (CPU or CUDA), defined in torch_compat.cpp
// so that this header need not include autocast_mode.h: one function per device kind in
// 1.13-2.3 (set_cpu_enabled, set_enabled for CUDA, ...), one taking the device type since
// 2.4. Other device types are refused (std::invalid_argument).
bool autocast_enabled(c10::DeviceType device);
void set_autocast_enabled(c10::DeviceType device, bool enabled);
c10::ScalarType autocast_dtype(c10::DeviceType device);
void set_autocast_dtype(c10::DeviceType device, c10::ScalarType dtype);

}  // namespace strata::torch_compat
