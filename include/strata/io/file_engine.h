// FileEngine: asynchronous reads and writes of (file, offset, buffer, length).
//
//   io::EngineOptions opts;
//   opts.aio = cfg.aio;                         // block_size, queue_depth, ...
//   opts.probe_dir = "/mnt/nvme";               // kAuto picks io_uring if it works there
//   STRATA_ASSIGN_OR_RETURN(io::FileEngine engine, io::FileEngine::create(opts));
//   STRATA_ASSIGN_OR_RETURN(io::File f, engine.open("/mnt/nvme/x.swp", io::OpenMode::kCreate));
//   io::IoHandle w = engine.write(f, 0, buf.span());   // in flight
//   io::IoHandle r = engine.read(f, 1 << 20, other.span());
//   STRATA_RETURN_IF_ERROR(w.wait());                   // per-op Status, with path/offset/length
//   if (r.ready()) ...                                  // poll without blocking
//
// Two backends behind one interface (DESIGN §4: the public wrapper checks preconditions,
// a backend only moves bytes):
//   - kUring: io_uring through liburing, O_DIRECT, registered (fixed) files and buffers,
//     batched submission;
//   - kThreadPool: blocking pread/pwrite on a pool of threads, for kernels or
//     filesystems where io_uring does not work.
// Both cut a transfer into `aio.block_size` pieces and keep up to `aio.queue_depth` of
// them in flight per worker; see Note [aio knobs] in src/io/io_worker.h for what every
// aio key does. Short transfers are resubmitted for the rest, EINTR/EAGAIN are retried,
// and other errors (EIO, ENOSPC, ...) end the op with an Error naming path, offset and
// length of the failing piece.
//
// Lifetimes. Buffers passed to read/write must stay valid until the op completes. An
// IoHandle that is destroyed while its op is in flight waits for it (it never abandons
// a buffer the kernel may still write into). A File closes when the File and every op
// using it are gone. Destroying the engine waits for every op in flight.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "strata/base/config.h"
#include "strata/base/status.h"
#include "strata/io/probe.h"

namespace strata::io {

// O_DIRECT needs offsets, lengths and buffer addresses aligned to the logical block
// size; strata always uses 4 KiB, which covers 512-byte and 4 KiB devices.
inline constexpr std::size_t kDirectAlignment = 4096;

enum class Backend : std::uint8_t { kAuto, kUring, kThreadPool };
std::string_view to_string(Backend b);
// "auto", "io_uring"/"uring", "threads"/"thread_pool" -> Backend.
Result<Backend> parse_backend(std::string_view name);

struct BackendChoice {
  Backend backend = Backend::kThreadPool;  // never kAuto
  std::string reason;
};
// The one place that decides which backend runs. kAuto takes io_uring when `probe`
// says it works in the directory (or, without a probe, when a ring initialises), and
// the thread pool otherwise. An explicit kUring or kThreadPool is returned as is;
// FileEngine::create fails if an explicit kUring cannot start. `strata env` prints this.
BackendChoice select_backend(Backend requested, const DirectoryProbe* probe);

// What the running engine does, as data (DESIGN §4: capabilities are a struct).
struct EngineCaps {
  Backend backend = Backend::kThreadPool;
  bool registered_buffers = false;  // register_buffer() makes transfers use fixed buffers
  bool registered_files = false;    // open() registers the fd with the ring
  int workers = 1;                  // aio.intra_op_parallelism
  int queue_depth = 1;              // pieces in flight per worker
  std::uint64_t block_size = 0;     // largest single transfer
};

class FaultInjector;

struct EngineOptions {
  AioConfig aio;
  Backend backend = Backend::kAuto;
  // Directory whose probe decides kAuto; empty means "try to initialise a ring".
  std::string probe_dir;
  // Test-only fault injection (fault_injection.h); null in production.
  std::shared_ptr<FaultInjector> faults;
};

enum class OpenMode : std::uint8_t {
  kRead,       // existing file, read only
  kReadWrite,  // existing file
  kCreate,     // create if missing, keep contents
  kTruncate,   // create, or truncate to zero
};

struct OpenOptions {
  OpenMode mode = OpenMode::kReadWrite;
  // O_DIRECT. When the filesystem refuses it (EINVAL, e.g. an old tmpfs) and
  // require_direct is false, the file opens buffered and File::direct() says so.
  bool direct = true;
  bool require_direct = false;
};

namespace detail {
struct FileState;
struct OpState;
struct EngineCore;
struct Registration;
}  // namespace detail

// An open file. Move-only; closing waits for nothing: ops in flight keep the fd alive.
class File {
 public:
  File() = default;
  File(File&&) noexcept = default;
  File& operator=(File&&) noexcept = default;
  ~File();

  bool valid() const { return state_ != nullptr; }
  const std::string& path() const;
  int fd() const;
  bool direct() const;
  bool writable() const;

  // fallocate(mode 0): reserves [offset, offset+length) on disk, so that a full disk
  // fails here (kNoSpace naming path, offset and length) and not in a later write.
  Status allocate(std::uint64_t offset, std::uint64_t length) const;
  Status truncate(std::uint64_t length) const;
  Result<std::uint64_t> size() const;

 private:
  friend class FileEngine;
  explicit File(std::shared_ptr<detail::FileState> s) : state_(std::move(s)) {}
  std::shared_ptr<detail::FileState> state_;
};

// The completion of one op. Move-only; wait() and ready() may be called from any
// thread, any number of times.
class IoHandle {
 public:
  IoHandle() = default;
  IoHandle(IoHandle&&) noexcept = default;
  IoHandle& operator=(IoHandle&& other) noexcept;
  IoHandle(const IoHandle&) = delete;
  IoHandle& operator=(const IoHandle&) = delete;
  ~IoHandle();  // waits if the op is in flight

  bool valid() const { return op_ != nullptr; }
  // True once every piece has completed (or the op failed and nothing is in flight).
  bool ready() const;
  // Blocks until ready and returns the op's Status (the first error of any piece).
  Status wait() const;
  // Waits up to `timeout`; true when ready.
  bool wait_for(std::chrono::nanoseconds timeout) const;
  // Bytes the op moves when it succeeds.
  std::uint64_t bytes() const;

 private:
  friend class FileEngine;
  explicit IoHandle(std::shared_ptr<detail::OpState> op) : op_(std::move(op)) {}
  std::shared_ptr<detail::OpState> op_;
};

// One piece of a vectored op: `length` bytes at file `offset` to or from `data`.
struct IoSegment {
  std::uint64_t offset = 0;
  std::byte* data = nullptr;
  std::size_t length = 0;
};

// A buffer registered with the ring (io_uring fixed buffers). Move-only; unregisters
// on destruction. Register long-lived buffers only (a pool arena): the kernel pins them.
class BufferRegistration {
 public:
  BufferRegistration() = default;
  BufferRegistration(BufferRegistration&&) noexcept = default;
  BufferRegistration& operator=(BufferRegistration&&) noexcept = default;
  ~BufferRegistration();
  bool active() const { return reg_ != nullptr; }

 private:
  friend class FileEngine;
  std::shared_ptr<detail::Registration> reg_;
};

class FileEngine {
 public:
  static Result<FileEngine> create(const EngineOptions& options);

  FileEngine(FileEngine&&) noexcept = default;
  FileEngine& operator=(FileEngine&&) noexcept;
  FileEngine(const FileEngine&) = delete;
  FileEngine& operator=(const FileEngine&) = delete;
  ~FileEngine();  // waits for every op in flight, then stops the workers

  const EngineCaps& caps() const;
  Backend backend() const { return caps().backend; }
  const std::string& backend_reason() const;

  Result<File> open(const std::string& path, const OpenOptions& options = {});

  // Preconditions (violations give an op that fails at once with kInvalidArgument):
  // a valid file, writable for writes; for a direct file, offsets, lengths and
  // addresses are multiples of kDirectAlignment.
  IoHandle read(const File& file, std::uint64_t offset, std::span<std::byte> dst);
  IoHandle write(const File& file, std::uint64_t offset, std::span<const std::byte> src);
  // Several segments of one file as one op: one handle, one Status, pieces in flight
  // together. The swap store writes a record's header and payload this way. `hold`
  // (optional) is released as soon as the op completes, on the thread that completes
  // it — e.g. staging buffers, which then go back to their pool without waiting for
  // the caller to call wait(). Its destructor must not block or throw.
  IoHandle readv(const File& file, std::span<const IoSegment> segments, std::shared_ptr<void> hold = nullptr);
  IoHandle writev(const File& file, std::span<const IoSegment> segments, std::shared_ptr<void> hold = nullptr);

  // Registers [data, data+bytes) as fixed buffers (io_uring). A no-op registration on
  // the thread pool. Fails with kResourceExhausted when the table is full.
  Result<BufferRegistration> register_buffer(std::span<std::byte> buffer);

 private:
  explicit FileEngine(std::shared_ptr<detail::EngineCore> core) : core_(std::move(core)) {}
  IoHandle submit(const File& file, bool write, std::span<const IoSegment> segments, std::shared_ptr<void> hold);
  std::shared_ptr<detail::EngineCore> core_;
};

}  // namespace strata::io
