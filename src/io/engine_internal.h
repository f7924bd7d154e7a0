// Internals of the file engine, shared by file_engine.cpp, io_worker.cpp and the two
// transports. Not a public header.
//
// Object graph (arrows are shared_ptr, so lifetimes follow from it):
//
//   FileEngine --> EngineCore --> Worker[intra_op_parallelism] --> Transport
//   File ------> FileState ----> EngineCore
//   IoHandle --> OpState ------> FileState
//   Worker slot --> Part ------> OpState            (only while a piece is in flight)
//
// Note [engine shutdown]: ~FileEngine calls EngineCore::shutdown(), which refuses new
// ops, lets every worker drain what it has (nothing in flight is abandoned) and joins
// the worker threads. Files and registrations may outlive the FileEngine: they keep
// the EngineCore (and its rings, still open for unregistering) alive, but no thread.
// Because the FileEngine holds a core reference until the joins are done, the core is
// never destroyed on one of its own worker threads.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "strata/io/fault_injection.h"
#include "strata/io/file_engine.h"

namespace strata::io::detail {

class Worker;
class Transport;

// The part of an op one worker carries out: a list of segments, cut into pieces of at
// most block_size as slots free up.
struct OpState {
  std::shared_ptr<FileState> file;
  bool write = false;
  std::uint64_t bytes = 0;

  // Set when any piece fails; workers then stop issuing the op's remaining pieces.
  std::atomic<bool> failed{false};
  std::atomic<int> parts_left{0};
  std::shared_ptr<void> hold;  // released when the op completes (FileEngine::writev)

  mutable std::mutex mu;
  mutable std::condition_variable cv;
  bool done = false;           // guarded by mu
  std::optional<Error> error;  // guarded by mu; the first error of any piece

  void fail(Error e);
  // Called once per part when its last piece has completed; the last call completes
  // the op. Note [op completion]: an op is done only when none of its pieces is in
  // flight, even after an error, because the caller may free the buffers at once.
  void finish_part();
  // An op that fails before it reaches a worker.
  static std::shared_ptr<OpState> failed_now(Error e);
};

struct Part {
  std::shared_ptr<OpState> op;
  std::vector<IoSegment> segments;
  std::size_t seg = 0;         // cursor: next piece starts at segments[seg] + seg_off
  std::uint64_t seg_off = 0;
  int in_flight = 0;           // pieces handed to the transport (including retries queued)
  bool issued_all = false;     // the cursor reached the end, or the op failed
};

// What a transport needs to start one piece.
struct PieceIo {
  bool write = false;
  int fd = -1;
  int fixed_file = -1;  // index in the ring's file table, or -1
  int fixed_buf = -1;   // index in the ring's buffer table, or -1
  std::byte* buf = nullptr;
  std::uint32_t length = 0;
  std::uint64_t offset = 0;
};

struct Completion {
  std::uint32_t slot = 0;
  int res = 0;  // bytes moved, or -errno
};

// A way to run pieces: io_uring, or threads calling pread/pwrite. Only the worker's
// own thread calls prepare/flush/wait; wake() and the register calls may come from any
// thread.
class Transport {
 public:
  virtual ~Transport() = default;
  // Queues one piece; with single_submit the transport starts it at once.
  virtual void prepare(std::uint32_t slot, const PieceIo& io) = 0;
  // Starts everything prepared since the last flush.
  virtual void flush() = 0;
  // Blocks until at least one piece completed or wake() was called; appends the
  // completions to `out`.
  virtual void wait(std::vector<Completion>& out) = 0;
  virtual void wake() = 0;
  virtual Status update_file(int index, int fd) = 0;
  virtual Status update_buffers(int index, const std::vector<iovec>& iovs) = 0;
};

// Ring-based transport; fails when io_uring cannot start. `max_files` and `max_bufs`
// size the sparse fixed tables; caps report whether registration works.
struct UringCaps {
  bool files = false;
  bool buffers = false;
};
Result<std::unique_ptr<Transport>> make_uring_transport(int queue_depth, bool single_submit, int max_files,
                                                        int max_bufs, UringCaps* caps);
std::unique_ptr<Transport> make_thread_transport(int threads, bool single_submit);

// A registered memory range: [base, base+length) is fixed buffer `index`.
struct RegEntry {
  std::uintptr_t base = 0;
  std::size_t length = 0;
  int index = -1;
};

struct EngineCore {
  EngineOptions options;
  EngineCaps caps;
  std::string reason;
  std::vector<std::unique_ptr<Worker>> workers;
  std::atomic<std::uint64_t> next_worker{0};
  std::atomic<bool> accepting{true};

  static constexpr int kMaxFiles = 64;
  static constexpr int kMaxBufs = 256;
  static constexpr std::size_t kMaxBufBytes = std::size_t{1} << 30;  // kernel limit per fixed buffer

  std::mutex table_mu;  // guards the slot maps below
  std::vector<bool> file_used = std::vector<bool>(kMaxFiles);
  std::vector<bool> buf_used = std::vector<bool>(kMaxBufs);

  mutable std::shared_mutex reg_mu;  // guards regs (read on every piece)
  std::vector<RegEntry> regs;        // sorted by base

  ~EngineCore();
  void shutdown();
  // The fixed buffer holding [p, p+n), or -1.
  int find_buffer(const std::byte* p, std::size_t n) const;
  // Registers fd in every ring's file table; returns the index or -1 if none is free.
  int register_file(int fd);
  void unregister_file(int index);
  void enqueue(std::shared_ptr<OpState> op, std::vector<IoSegment> segments);
};

struct FileState {
  std::shared_ptr<EngineCore> core;
  std::string path;
  int fd = -1;
  int fixed_index = -1;
  bool direct = false;
  bool writable = false;
  ~FileState();
};

struct Registration {
  std::shared_ptr<EngineCore> core;
  std::vector<int> indices;
  ~Registration();
};

}  // namespace strata::io::detail
