// Worker: one thread that owns one transport and schedules pieces onto it.
//
// Note [aio knobs] — what each key of the `aio` config section does, on both backends:
//   block_size            the largest single transfer handed to the kernel. An op is cut
//                         into pieces of this size (the last one shorter); the pieces of
//                         one op are in flight together.
//   queue_depth           pieces in flight per worker: the ring's depth (io_uring), or
//                         the number of pread/pwrite threads per worker (thread pool).
//   intra_op_parallelism  workers, each with its own thread and its own ring or thread
//                         group. An op of at least two blocks is cut into this many
//                         contiguous, block-aligned parts, one per worker; smaller ops go
//                         whole to the next worker in turn. Total in flight is
//                         queue_depth x intra_op_parallelism.
//   single_submit         start every piece on its own (one io_uring_enter per piece;
//                         one queue hand-off per piece in the thread pool) instead of
//                         one submission per batch.
//   overlap_events        true: a completed piece's slot is refilled at once, so the
//                         queue stays full. false: lockstep, as DeepSpeed does without
//                         overlap — submit up to queue_depth pieces, wait until all of
//                         them complete, then submit the next batch.
//
// Note [piece retries]: a piece that completes short is resubmitted for its remaining
// bytes (same slot, advanced offset and buffer). EINTR and EAGAIN resubmit the piece
// unchanged, up to kMaxRetries times. A read that returns 0 bytes hit the end of the
// file: the op fails with kDataLoss. Any other error fails the op with the errno's
// code, naming the file, the piece's offset and its remaining length.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine_internal.h"

namespace strata::io::detail {

class Worker {
 public:
  static constexpr int kMaxRetries = 64;

  Worker(EngineCore& core, std::unique_ptr<Transport> transport, int queue_depth, std::uint64_t block_size,
         bool overlap_events, std::shared_ptr<FaultInjector> faults);
  ~Worker();  // stops (drains) and joins
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void enqueue(std::shared_ptr<Part> part);
  // Finishes everything queued or in flight, then ends the thread. Idempotent.
  void stop();
  Transport& transport() { return *transport_; }

 private:
  struct Slot {
    std::shared_ptr<Part> part;
    std::uint64_t offset = 0;
    std::byte* buf = nullptr;
    std::uint32_t length = 0;
    std::uint32_t done = 0;  // bytes already moved (short transfers)
    int retries = 0;
  };

  void run();
  void take_incoming(std::unique_lock<std::mutex>& lock);
  void issue();
  void start(std::uint32_t slot);
  void complete(std::uint32_t slot, int res);
  void release(std::uint32_t slot);
  void finish_if_idle(Part& part);

  EngineCore& core_;
  std::unique_ptr<Transport> transport_;
  const int queue_depth_;
  const std::uint64_t block_size_;
  const bool overlap_;
  std::shared_ptr<FaultInjector> faults_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Part>> incoming_;  // guarded by mu_
  bool stopping_ = false;                       // guarded by mu_
  bool exited_ = false;                         // guarded by mu_; run() has returned
  // True while the worker blocks in transport_->wait(); an enqueue that finds it true
  // (and clears it) wakes the transport, so at most one wake is in flight per wait.
  std::atomic<bool> waiting_{false};

  // Owned by the worker thread.
  std::deque<std::shared_ptr<Part>> active_;  // parts with pieces still to issue
  std::deque<std::uint32_t> retry_;           // slots to resubmit
  std::vector<Slot> slots_;
  std::vector<std::uint32_t> free_slots_;
  int in_flight_ = 0;  // slots started and not yet completed
  std::vector<Completion> completions_;

  std::thread thread_;
};

}  // namespace strata::io::detail
