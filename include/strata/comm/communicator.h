// Communicator: the collectives strata needs, over any c10d::ProcessGroup.
//
//   STRATA_ASSIGN_OR_RETURN(auto comm, strata::comm::init_from_env(opts));  // rendezvous.h
//   at::Tensor full = at::empty({comm->world() * shard.numel()}, shard.options());
//   comm::Handle h = comm->all_gather(shard, full);        // async
//   ... overlap work ...
//   STRATA_RETURN_IF_ERROR(h.wait());                      // Status, never hangs forever
//   STRATA_RETURN_IF_ERROR(comm->reduce_scatter(grads, grad_shard, comm::ReduceOp::kAvg).wait());
//
// Every operation is asynchronous and returns a Handle. wait() gives a Status: a
// timeout or a peer failure becomes an error naming the op, its size and the rank. A
// fallback's local work (a sum, a copy back) runs in the backend's thread as soon as its
// transfer ends (Note [completion in the backend's thread]), not in wait().
//
// Backends differ in what they can do (Gloo in torch 1.13 has no reduce_scatter and no
// _allgather_base, and rejects bf16). Capabilities are data (Caps), one set for the
// backend that moves CPU tensors and one for device (CUDA) tensors: in torch 2.x one
// group can hold both ("cpu:gloo,cuda:nccl"). Each operation picks the native path or
// its fallback in one place (communicator.cpp), by its tensors' device:
//   reduce_scatter   _reduce_scatter_base (torch.distributed.reduce_scatter_tensor), or
//                    alltoall_base + a local sum in fp32 (its receive
//                    buffers are pooled, up to the most the fallbacks ever had in use)
//   all_gather       _allgather_base (all_gather_into_tensor), or allgather into views
//                    of the flat output
//   bf16/fp16 moves  bit-cast to raw bytes when the backend rejects the dtype
//                    (int16 would do, but Gloo in 1.13 rejects int16 too)
//   bf16/fp16 sums   reduced in fp32 when the backend rejects the dtype (the fp32 copy
//                    comes from the same pool)
//
// create() sets SIGPIPE to ignored (if it still has its default action), so a peer that
// dies mid-write is an error from wait(), not a signal that kills this rank.
//
// Collectives must be issued in the same order on every rank. With check_order on
// (debug builds, or STRATA_COMM_CHECK=1), each op first exchanges a tiny
// (sequence number, op signature) record so divergence is a clear error, not a hang.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>

#include "strata/base/status.h"

namespace c10d {
class ProcessGroup;
class Work;
}  // namespace c10d

namespace strata::comm {

enum class ReduceOp { kSum, kAvg, kMax };

// What a backend can do natively. Anything false goes through the fallback.
struct Caps {
  bool reduce_scatter = false;   // c10d _reduce_scatter_base (flat in, flat out)
  bool allgather_base = false;   // c10d _allgather_base (flat in, flat out)
  bool bf16 = false;             // collectives accept bfloat16 tensors
  bool fp16 = false;             // collectives accept float16 tensors
  bool avg = false;              // ReduceOp::AVG is native
};
// The known table: "gloo" (torch 1.13) and "nccl"; anything else gets all fallbacks.
Caps caps_for_backend(const std::string& backend_name);

struct CommOptions {
  std::chrono::milliseconds timeout{300'000};
  // Exchange (seq, signature) before each op and fail on divergence. Defaults to on in
  // debug builds; STRATA_COMM_CHECK=1/0 in the environment overrides.
  bool check_order = default_check_order();
  static bool default_check_order();
};

// An in-flight collective. Move-only. Destroying a handle that was never waited on
// waits for it (so buffers it writes stay owned) and logs a failure, if any.
class Handle {
 public:
  Handle();  // an already-completed no-op
  Handle(Handle&&) noexcept;
  Handle& operator=(Handle&&) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle();

  // Blocks until the op completes or its timeout passes. Idempotent.
  Status wait();
  // True once the op has finished (successfully or not); wait() then returns at once.
  bool done();

 private:
  friend class Communicator;
  struct State;
  explicit Handle(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

class Communicator {
 public:
  static Result<std::unique_ptr<Communicator>> create(c10::intrusive_ptr<c10d::ProcessGroup> pg,
                                                      CommOptions options = {});
  ~Communicator();

  int rank() const { return rank_; }
  int world() const { return world_; }
  // The backend, and its caps, that runs collectives on tensors of CPU memory; and those
  // for tensors on a device (the same as CPU's unless the group has a device backend).
  const Caps& caps() const { return caps_; }
  const std::string& backend() const { return backend_; }
  const Caps& device_caps() const { return device_caps_; }
  const std::string& device_backend() const { return device_backend_; }
  std::chrono::milliseconds timeout() const { return options_.timeout; }
  // For ops issued from now on (an engine's comm_timeout_s on a shared communicator).
  void set_timeout(std::chrono::milliseconds timeout) { options_.timeout = timeout; }
  // Number of collectives issued so far (the same on every rank if all is well).
  std::uint64_t sequence() const { return seq_; }

  // output (world * n elements, contiguous) <- every rank's input (n elements), in rank order.
  Handle all_gather(const at::Tensor& input, const at::Tensor& output);
  // output (n elements) <- op over ranks of input[rank*n, (rank+1)*n). kSum or kAvg.
  // output may be that very slice of input (in place): every path reads all of input
  // before it writes output.
  Handle reduce_scatter(const at::Tensor& input, const at::Tensor& output, ReduceOp op);
  // In place. kSum, kAvg or kMax.
  Handle all_reduce(const at::Tensor& tensor, ReduceOp op);
  // In place: every rank gets root's tensor.
  Handle broadcast(const at::Tensor& tensor, int root);
  Handle barrier();

  // The underlying group, for callers that need something strata does not wrap.
  const c10::intrusive_ptr<c10d::ProcessGroup>& process_group() const { return pg_; }

 private:
  Communicator(c10::intrusive_ptr<c10d::ProcessGroup> pg, CommOptions options);

  // Runs the order check (if on), then launches `start` and wraps its Work.
  Handle issue(const std::string& op, const at::Tensor& t,
               const std::function<c10::intrusive_ptr<c10d::Work>()>& start,
               std::function<void()> finish = {});
  Status check_order(const std::string& op, const at::Tensor& t);
  // A completed handle whose wait() returns `st` (argument errors are reported there,
  // so callers handle every failure in one place).
  static Handle error_handle(Status st);
  // A tensor the backend accepts for a data move: bf16/fp16 viewed as bytes if needed.
  at::Tensor movable(const at::Tensor& t) const;
  bool reducible(const at::Tensor& t) const;
  const Caps& caps_for(const at::Tensor& t) const { return t.device().is_cpu() ? caps_ : device_caps_; }

  struct ScratchPool;

  c10::intrusive_ptr<c10d::ProcessGroup> pg_;
  CommOptions options_;
  std::shared_ptr<ScratchPool> scratch_;
  Caps caps_, device_caps_;
  std::string backend_, device_backend_;
  int rank_ = 0;
  int world_ = 1;
  std::uint64_t seq_ = 0;
};

}  // namespace strata::comm
