// The public face of the file engine: preconditions, backend selection, files, handles
// and buffer registration. Scheduling lives in io_worker.cpp, the backends in
// uring_transport.cpp and thread_transport.cpp.
#include "strata/io/file_engine.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "io_worker.h"
#include "strata/base/aligned.h"
#include "strata/base/log.h"
#include "strata/base/units.h"

namespace strata::io {

std::string_view to_string(Backend b) {
  switch (b) {
    case Backend::kAuto: return "auto";
    case Backend::kUring: return "io_uring";
    case Backend::kThreadPool: return "threads";
  }
  return "unknown";
}

Result<Backend> parse_backend(std::string_view name) {
  if (name == "auto") return Backend::kAuto;
  if (name == "io_uring" || name == "uring") return Backend::kUring;
  if (name == "threads" || name == "thread_pool" || name == "pool") return Backend::kThreadPool;
  return make_error(ErrorCode::kInvalidArgument, "unknown I/O backend '{}'; expected auto, io_uring or threads", name);
}

BackendChoice select_backend(Backend requested, const DirectoryProbe* probe) {
  if (requested == Backend::kUring) return {Backend::kUring, "io_uring requested"};
  if (requested == Backend::kThreadPool) return {Backend::kThreadPool, "thread pool requested"};
  if (probe != nullptr) {
    if (probe->io_uring.ok) return {Backend::kUring, "io_uring completes O_DIRECT reads and writes in " + probe->dir};
    return {Backend::kThreadPool, "io_uring unusable in " + probe->dir + ": " + probe->io_uring.detail};
  }
  io_uring ring;
  if (int rc = io_uring_queue_init(2, &ring, 0); rc < 0) {
    return {Backend::kThreadPool, "io_uring unavailable: " + errno_error(-rc, "io_uring_queue_init").message()};
  }
  io_uring_queue_exit(&ring);
  return {Backend::kUring, "an io_uring initialises"};
}

namespace detail {

void OpState::fail(Error e) {
  {
    std::lock_guard lock(mu);
    if (!error) error = std::move(e);
  }
  failed.store(true);
}

void OpState::finish_part() {
  if (parts_left.fetch_sub(1) != 1) return;
  hold.reset();  // before `done`: a waiter may reuse what it held at once
  {
    std::lock_guard lock(mu);
    done = true;
  }
  cv.notify_all();
}

std::shared_ptr<OpState> OpState::failed_now(Error e) {
  auto op = std::make_shared<OpState>();
  op->error = std::move(e);
  op->failed = true;
  op->done = true;
  return op;
}

EngineCore::~EngineCore() { shutdown(); }

void EngineCore::shutdown() {
  accepting.store(false);
  for (auto& w : workers) w->stop();  // drains: Note [engine shutdown]
}

int EngineCore::find_buffer(const std::byte* p, std::size_t n) const {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  std::shared_lock lock(reg_mu);
  auto it = std::upper_bound(regs.begin(), regs.end(), addr,
                             [](std::uintptr_t a, const RegEntry& e) { return a < e.base; });
  if (it == regs.begin()) return -1;
  --it;
  return addr + n <= it->base + it->length ? it->index : -1;
}

int EngineCore::register_file(int fd) {
  if (!caps.registered_files) return -1;
  std::lock_guard lock(table_mu);
  auto slot = std::find(file_used.begin(), file_used.end(), false);
  if (slot == file_used.end()) return -1;  // table full: the file works unregistered
  const int index = static_cast<int>(slot - file_used.begin());
  for (auto& w : workers) {
    if (auto st = w->transport().update_file(index, fd); !st) {
      log::debug("not registering {} with io_uring: {}", fd, st.error());
      for (auto& w2 : workers) (void)w2->transport().update_file(index, -1);
      return -1;
    }
  }
  *slot = true;
  return index;
}

void EngineCore::unregister_file(int index) {
  std::lock_guard lock(table_mu);
  for (auto& w : workers) (void)w->transport().update_file(index, -1);
  file_used[static_cast<std::size_t>(index)] = false;
}

void EngineCore::enqueue(std::shared_ptr<OpState> op, std::vector<IoSegment> segments) {
  const std::size_t n_workers = workers.size();
  const std::uint64_t block = caps.block_size;
  const std::uint64_t first = next_worker.fetch_add(1);
  if (n_workers == 1 || op->bytes < 2 * block) {
    op->parts_left = 1;
    auto part = std::make_shared<Part>();
    part->op = std::move(op);
    part->segments = std::move(segments);
    workers[first % n_workers]->enqueue(std::move(part));
    return;
  }
  // intra_op_parallelism: contiguous, block-aligned parts, one per worker.
  const std::uint64_t per = round_up((op->bytes + n_workers - 1) / n_workers, block);
  std::vector<std::shared_ptr<Part>> parts;
  std::uint64_t in_part = 0;
  for (const IoSegment& seg : segments) {
    std::uint64_t off = 0;
    while (off < seg.length) {
      if (parts.empty() || in_part == per) {
        parts.push_back(std::make_shared<Part>());
        parts.back()->op = op;
        in_part = 0;
      }
      const std::uint64_t take = std::min(seg.length - off, per - in_part);
      parts.back()->segments.push_back(IoSegment{seg.offset + off, seg.data + off, static_cast<std::size_t>(take)});
      off += take;
      in_part += take;
    }
  }
  op->parts_left = static_cast<int>(parts.size());
  for (std::size_t i = 0; i < parts.size(); ++i) workers[(first + i) % n_workers]->enqueue(std::move(parts[i]));
}

FileState::~FileState() {
  if (fixed_index >= 0) core->unregister_file(fixed_index);
  if (fd >= 0) ::close(fd);
}

Registration::~Registration() {
  {
    std::unique_lock lock(core->reg_mu);
    std::erase_if(core->regs, [&](const RegEntry& e) {
      return std::find(indices.begin(), indices.end(), e.index) != indices.end();
    });
  }
  std::lock_guard lock(core->table_mu);
  const std::vector<iovec> empty(1, iovec{nullptr, 0});
  for (int index : indices) {
    for (auto& w : core->workers) (void)w->transport().update_buffers(index, empty);
    core->buf_used[static_cast<std::size_t>(index)] = false;
  }
}

}  // namespace detail

// ---- File ---------------------------------------------------------------------------

File::~File() = default;
const std::string& File::path() const { return state_->path; }
int File::fd() const { return state_->fd; }
bool File::direct() const { return state_->direct; }
bool File::writable() const { return state_->writable; }

Status File::allocate(std::uint64_t offset, std::uint64_t length) const {
  if (length == 0) return ok();
  int rc;
  do {
    rc = ::fallocate(state_->fd, 0, static_cast<off_t>(offset), static_cast<off_t>(length));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    return make_error(errno_error(errno, "fallocate"))
        .with_path(state_->path)
        .with_offset(offset)
        .with_length(length)
        .with_op("reserve");
  }
  return ok();
}

Status File::truncate(std::uint64_t length) const {
  if (::ftruncate(state_->fd, static_cast<off_t>(length)) != 0) {
    return make_error(errno_error(errno, "ftruncate")).with_path(state_->path).with_length(length);
  }
  return ok();
}

Result<std::uint64_t> File::size() const {
  struct stat st {};
  if (::fstat(state_->fd, &st) != 0) return make_error(errno_error(errno, "fstat")).with_path(state_->path);
  return static_cast<std::uint64_t>(st.st_size);
}

// ---- IoHandle -----------------------------------------------------------------------

IoHandle& IoHandle::operator=(IoHandle&& other) noexcept {
  if (this != &other) {
    if (op_) (void)wait();  // never drop an op in flight
    op_ = std::move(other.op_);
  }
  return *this;
}

IoHandle::~IoHandle() {
  if (op_) (void)wait();
}

bool IoHandle::ready() const {
  if (!op_) return true;
  std::lock_guard lock(op_->mu);
  return op_->done;
}

Status IoHandle::wait() const {
  if (!op_) return make_error(ErrorCode::kFailedPrecondition, "wait on an empty IoHandle");
  std::unique_lock lock(op_->mu);
  op_->cv.wait(lock, [&] { return op_->done; });
  if (op_->error) return std::unexpected(*op_->error);
  return ok();
}

bool IoHandle::wait_for(std::chrono::nanoseconds timeout) const {
  if (!op_) return true;
  std::unique_lock lock(op_->mu);
  return op_->cv.wait_for(lock, timeout, [&] { return op_->done; });
}

std::uint64_t IoHandle::bytes() const { return op_ ? op_->bytes : 0; }

BufferRegistration::~BufferRegistration() = default;

// ---- FileEngine ---------------------------------------------------------------------

Result<FileEngine> FileEngine::create(const EngineOptions& options) {
  const AioConfig& aio = options.aio;
  if (aio.block_size == 0 || aio.block_size % kDirectAlignment != 0 || aio.block_size > (std::uint64_t{1} << 30)) {
    return make_error(ErrorCode::kInvalidArgument, "aio.block_size must be a multiple of 4096 up to 1 GiB, got {}",
                      aio.block_size);
  }
  if (aio.queue_depth < 1 || aio.queue_depth > 4096 || aio.intra_op_parallelism < 1 ||
      aio.intra_op_parallelism > 256) {
    return make_error(ErrorCode::kInvalidArgument,
                      "aio.queue_depth must be 1..4096 and aio.intra_op_parallelism 1..256, got {} and {}",
                      aio.queue_depth, aio.intra_op_parallelism);
  }
  BackendChoice choice;
  if (options.backend == Backend::kAuto && !options.probe_dir.empty()) {
    const DirectoryProbe probe = probe_directory(options.probe_dir);
    choice = select_backend(Backend::kAuto, &probe);
  } else {
    choice = select_backend(options.backend, nullptr);
  }

  auto core = std::make_shared<detail::EngineCore>();
  core->options = options;
  core->caps.workers = aio.intra_op_parallelism;
  core->caps.queue_depth = aio.queue_depth;
  core->caps.block_size = aio.block_size;

  std::vector<std::unique_ptr<detail::Transport>> transports;
  if (choice.backend == Backend::kUring) {
    bool files = true, buffers = true;
    for (int i = 0; i < aio.intra_op_parallelism; ++i) {
      detail::UringCaps uc;
      auto t = detail::make_uring_transport(aio.queue_depth, aio.single_submit, detail::EngineCore::kMaxFiles,
                                            detail::EngineCore::kMaxBufs, &uc);
      if (!t) {
        if (options.backend == Backend::kUring) return make_error(std::move(t).error().with_note("io_uring backend"));
        choice = {Backend::kThreadPool, "io_uring failed to start: " + t.error().to_string()};
        transports.clear();
        break;
      }
      files = files && uc.files;
      buffers = buffers && uc.buffers;
      transports.push_back(std::move(*t));
    }
    core->caps.registered_files = choice.backend == Backend::kUring && files;
    core->caps.registered_buffers = choice.backend == Backend::kUring && buffers;
  }
  if (choice.backend == Backend::kThreadPool) {
    for (int i = 0; i < aio.intra_op_parallelism; ++i) {
      transports.push_back(detail::make_thread_transport(aio.queue_depth, aio.single_submit));
    }
  }
  core->caps.backend = choice.backend;
  core->reason = choice.reason;
  for (auto& t : transports) {
    core->workers.push_back(std::make_unique<detail::Worker>(*core, std::move(t), aio.queue_depth, aio.block_size,
                                                             aio.overlap_events, options.faults));
  }
  log::debug("file engine: {} ({}), block {} x depth {} x {} workers", to_string(choice.backend), choice.reason,
             format_bytes(aio.block_size), aio.queue_depth, aio.intra_op_parallelism);
  return FileEngine(std::move(core));
}

FileEngine& FileEngine::operator=(FileEngine&& other) noexcept {
  if (this != &other) {
    if (core_) core_->shutdown();
    core_ = std::move(other.core_);
  }
  return *this;
}

FileEngine::~FileEngine() {
  if (core_) core_->shutdown();
}

const EngineCaps& FileEngine::caps() const { return core_->caps; }
const std::string& FileEngine::backend_reason() const { return core_->reason; }

Result<File> FileEngine::open(const std::string& path, const OpenOptions& options) {
  int flags = O_CLOEXEC;
  switch (options.mode) {
    case OpenMode::kRead: flags |= O_RDONLY; break;
    case OpenMode::kReadWrite: flags |= O_RDWR; break;
    case OpenMode::kCreate: flags |= O_RDWR | O_CREAT; break;
    case OpenMode::kTruncate: flags |= O_RDWR | O_CREAT | O_TRUNC; break;
  }
  bool direct = options.direct;
  int fd = ::open(path.c_str(), flags | (direct ? O_DIRECT : 0), 0644);
  if (fd < 0 && direct && errno == EINVAL && !options.require_direct) {
    log::warn("{}: the filesystem refuses O_DIRECT; using buffered I/O", path);
    direct = false;
    fd = ::open(path.c_str(), flags, 0644);
  }
  if (fd < 0) return make_error(errno_error(errno, "open")).with_path(path);
  auto state = std::make_shared<detail::FileState>();
  state->core = core_;
  state->path = path;
  state->fd = fd;
  state->direct = direct;
  state->writable = options.mode != OpenMode::kRead;
  state->fixed_index = core_->register_file(fd);
  return File(std::move(state));
}

IoHandle FileEngine::read(const File& file, std::uint64_t offset, std::span<std::byte> dst) {
  const IoSegment seg{offset, dst.data(), dst.size()};
  return submit(file, false, {&seg, 1}, nullptr);
}

IoHandle FileEngine::write(const File& file, std::uint64_t offset, std::span<const std::byte> src) {
  // The engine never writes through the pointer; IoSegment is shared by both directions.
  const IoSegment seg{offset, const_cast<std::byte*>(src.data()), src.size()};
  return submit(file, true, {&seg, 1}, nullptr);
}

IoHandle FileEngine::readv(const File& file, std::span<const IoSegment> segments, std::shared_ptr<void> hold) {
  return submit(file, false, segments, std::move(hold));
}
IoHandle FileEngine::writev(const File& file, std::span<const IoSegment> segments, std::shared_ptr<void> hold) {
  return submit(file, true, segments, std::move(hold));
}

IoHandle FileEngine::submit(const File& file, bool write, std::span<const IoSegment> segments,
                            std::shared_ptr<void> hold) {
  const char* what = write ? "write" : "read";
  auto fail = [&](Error e) { return IoHandle(detail::OpState::failed_now(std::move(e).with_op(what))); };
  if (!core_) return fail(Error(ErrorCode::kFailedPrecondition, "the file engine was moved from"));
  if (!file.valid()) return fail(Error(ErrorCode::kInvalidArgument, "invalid File"));
  if (file.state_->core != core_) return fail(Error(ErrorCode::kInvalidArgument, "File belongs to another engine"));
  if (write && !file.writable()) {
    return fail(Error(ErrorCode::kInvalidArgument, "file is open read-only").with_path(file.path()));
  }
  if (!core_->accepting.load()) {
    return fail(Error(ErrorCode::kFailedPrecondition, "the file engine is shut down").with_path(file.path()));
  }
  std::vector<IoSegment> segs;
  segs.reserve(segments.size());
  std::uint64_t bytes = 0;
  for (const IoSegment& s : segments) {
    if (s.length == 0) continue;
    if (s.data == nullptr) {
      return fail(Error(ErrorCode::kInvalidArgument, "null buffer").with_path(file.path()).with_offset(s.offset));
    }
    if (file.direct() && (s.offset % kDirectAlignment != 0 || s.length % kDirectAlignment != 0 ||
                          reinterpret_cast<std::uintptr_t>(s.data) % kDirectAlignment != 0)) {
      return fail(Error(ErrorCode::kInvalidArgument,
                        fmt::format("O_DIRECT needs offset, length and buffer address aligned to {} bytes",
                                    kDirectAlignment))
                      .with_path(file.path())
                      .with_offset(s.offset)
                      .with_length(s.length));
    }
    bytes += s.length;
    segs.push_back(s);
  }
  auto op = std::make_shared<detail::OpState>();
  op->file = file.state_;
  op->write = write;
  op->bytes = bytes;
  op->hold = std::move(hold);
  if (segs.empty()) {
    op->hold.reset();
    op->done = true;
    return IoHandle(std::move(op));
  }
  core_->enqueue(op, std::move(segs));
  return IoHandle(std::move(op));
}

Result<BufferRegistration> FileEngine::register_buffer(std::span<std::byte> buffer) {
  BufferRegistration out;
  if (!core_->caps.registered_buffers || buffer.empty()) return out;
  auto reg = std::make_shared<detail::Registration>();
  reg->core = core_;
  std::lock_guard lock(core_->table_mu);
  // One fixed buffer covers at most 1 GiB; a larger range takes several slots.
  for (std::size_t off = 0; off < buffer.size(); off += detail::EngineCore::kMaxBufBytes) {
    const std::size_t len = std::min(detail::EngineCore::kMaxBufBytes, buffer.size() - off);
    auto slot = std::find(core_->buf_used.begin() + (reg->indices.empty() ? 0 : reg->indices.back() + 1),
                          core_->buf_used.end(), false);
    if (slot == core_->buf_used.end()) {
      return make_error(ErrorCode::kResourceExhausted, "no free io_uring buffer slot ({} in use)",
                        detail::EngineCore::kMaxBufs);
    }
    const int index = static_cast<int>(slot - core_->buf_used.begin());
    const std::vector<iovec> iov(1, iovec{buffer.data() + off, len});
    for (auto& w : core_->workers) {
      if (auto st = w->transport().update_buffers(index, iov); !st) {
        const std::vector<iovec> empty(1, iovec{nullptr, 0});
        for (auto& w2 : core_->workers) (void)w2->transport().update_buffers(index, empty);
        // `reg` (declared before `lock`) unregisters the slots taken so far after the
        // lock is released.
        return make_error(std::move(st).error().with_length(len).with_note("registering an I/O buffer"));
      }
    }
    *slot = true;
    reg->indices.push_back(index);
    std::unique_lock rlock(core_->reg_mu);
    detail::RegEntry e{reinterpret_cast<std::uintptr_t>(buffer.data() + off), len, index};
    core_->regs.insert(std::upper_bound(core_->regs.begin(), core_->regs.end(), e,
                                        [](const detail::RegEntry& a, const detail::RegEntry& b) {
                                          return a.base < b.base;
                                        }),
                       e);
  }
  out.reg_ = std::move(reg);
  return out;
}

}  // namespace strata::io
