#include "io_worker.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>

namespace strata::io::detail {

Worker::Worker(EngineCore& core, std::unique_ptr<Transport> transport, int queue_depth, std::uint64_t block_size,
               bool overlap_events, std::shared_ptr<FaultInjector> faults)
    : core_(core),
      transport_(std::move(transport)),
      queue_depth_(queue_depth),
      block_size_(block_size),
      overlap_(overlap_events),
      faults_(std::move(faults)),
      slots_(static_cast<std::size_t>(queue_depth)) {
  free_slots_.reserve(slots_.size());
  for (std::size_t i = slots_.size(); i-- > 0;) free_slots_.push_back(static_cast<std::uint32_t>(i));
  completions_.reserve(slots_.size() + 2);
  thread_ = std::thread([this] { run(); });
}

Worker::~Worker() { stop(); }

void Worker::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (waiting_.exchange(false)) transport_->wake();
  if (thread_.joinable()) thread_.join();
}

void Worker::enqueue(std::shared_ptr<Part> part) {
  {
    std::lock_guard lock(mu_);
    if (exited_) {
      part->op->fail(Error(ErrorCode::kFailedPrecondition, "the file engine is shut down"));
      part->op->finish_part();
      return;
    }
    incoming_.push_back(std::move(part));
  }
  cv_.notify_one();
  if (waiting_.exchange(false)) transport_->wake();
}

void Worker::take_incoming(std::unique_lock<std::mutex>&) {
  while (!incoming_.empty()) {
    active_.push_back(std::move(incoming_.front()));
    incoming_.pop_front();
  }
}

void Worker::run() {
  for (;;) {
    {
      std::unique_lock lock(mu_);
      take_incoming(lock);
      if (in_flight_ == 0 && retry_.empty() && active_.empty()) {
        if (stopping_) {
          exited_ = true;
          return;
        }
        cv_.wait(lock, [&] { return stopping_ || !incoming_.empty(); });
        continue;
      }
    }
    issue();
    if (in_flight_ == 0) continue;  // everything left belonged to failed ops

    waiting_.store(true);
    {
      // New work and a free slot: go round again instead of sleeping in the transport.
      std::lock_guard lock(mu_);
      const bool room = overlap_ ? in_flight_ < queue_depth_ : false;
      if (room && !incoming_.empty()) {
        waiting_.store(false);
        continue;
      }
    }
    completions_.clear();
    transport_->wait(completions_);
    waiting_.store(false);
    for (const Completion& c : completions_) complete(c.slot, c.res);
  }
}

void Worker::issue() {
  // overlap_events: refill freed slots at once; otherwise only start a new batch when
  // the previous one has fully completed (Note [aio knobs]).
  int budget = overlap_ ? queue_depth_ - in_flight_ : (in_flight_ == 0 ? queue_depth_ : 0);
  while (budget > 0) {
    if (!retry_.empty()) {
      const std::uint32_t slot = retry_.front();
      retry_.pop_front();
      if (slots_[slot].part->op->failed.load(std::memory_order_relaxed)) {
        release(slot);
        continue;
      }
      start(slot);
      --budget;
      continue;
    }
    if (active_.empty() || free_slots_.empty()) break;
    std::shared_ptr<Part> part = active_.front();
    if (part->op->failed.load(std::memory_order_relaxed)) {
      part->issued_all = true;
      active_.pop_front();
      finish_if_idle(*part);
      continue;
    }
    const IoSegment& seg = part->segments[part->seg];
    const auto len = static_cast<std::uint32_t>(std::min<std::uint64_t>(block_size_, seg.length - part->seg_off));
    const std::uint32_t slot = free_slots_.back();
    free_slots_.pop_back();
    slots_[slot] = Slot{part, seg.offset + part->seg_off, seg.data + part->seg_off, len, 0, 0};
    ++part->in_flight;
    part->seg_off += len;
    if (part->seg_off == seg.length) {
      ++part->seg;
      part->seg_off = 0;
    }
    if (part->seg == part->segments.size()) {
      part->issued_all = true;
      active_.pop_front();
    }
    start(slot);
    --budget;
  }
  transport_->flush();
}

void Worker::start(std::uint32_t slot) {
  Slot& s = slots_[slot];
  const FileState& f = *s.part->op->file;
  PieceIo io;
  io.write = s.part->op->write;
  io.fd = f.fd;
  io.fixed_file = f.fixed_index;
  io.buf = s.buf + s.done;
  io.length = s.length - s.done;
  io.offset = s.offset + s.done;
  io.fixed_buf = core_.caps.registered_buffers ? core_.find_buffer(io.buf, io.length) : -1;
  ++in_flight_;
  transport_->prepare(slot, io);
}

void Worker::complete(std::uint32_t slot, int res) {
  Slot& s = slots_[slot];
  --in_flight_;
  OpState& op = *s.part->op;
  const std::uint32_t remaining = s.length - s.done;
  if (faults_) res = faults_->on_complete(op.write, res, s.buf + s.done, remaining);
  const std::uint64_t at = s.offset + s.done;
  const char* what = op.write ? "write" : "read";
  if (res < 0) {
    const int err = -res;
    if ((err == EINTR || err == EAGAIN) && s.retries < kMaxRetries) {
      ++s.retries;
      retry_.push_back(slot);
      return;
    }
    Error e = errno_error(err, what);
    if (err == EINTR || err == EAGAIN) e.with_note(fmt::format("still failing after {} retries", kMaxRetries));
    op.fail(std::move(e).with_path(op.file->path).with_offset(at).with_length(remaining).with_op(what));
  } else if (res == 0) {
    if (!op.write) {
      struct stat st {};
      const long long size = ::fstat(op.file->fd, &st) == 0 ? static_cast<long long>(st.st_size) : -1;
      op.fail(Error(ErrorCode::kDataLoss,
                    fmt::format("read: unexpected end of file (file size {}); the file is shorter than the data "
                                "written to it",
                                size))
                  .with_path(op.file->path)
                  .with_offset(at)
                  .with_length(remaining)
                  .with_op(what));
    } else if (s.retries < kMaxRetries) {
      ++s.retries;
      retry_.push_back(slot);
      return;
    } else {
      op.fail(Error(ErrorCode::kIoError, "write: no progress after repeated attempts")
                  .with_path(op.file->path)
                  .with_offset(at)
                  .with_length(remaining)
                  .with_op(what));
    }
  } else if (static_cast<std::uint32_t>(res) < remaining) {
    s.done += static_cast<std::uint32_t>(res);  // Note [piece retries]: resubmit the rest
    retry_.push_back(slot);
    return;
  }
  release(slot);
}

void Worker::release(std::uint32_t slot) {
  std::shared_ptr<Part> part = std::move(slots_[slot].part);
  slots_[slot] = Slot{};
  free_slots_.push_back(slot);
  --part->in_flight;
  finish_if_idle(*part);
}

void Worker::finish_if_idle(Part& part) {
  if (part.issued_all && part.in_flight == 0) {
    part.issued_all = false;  // finish exactly once
    part.op->finish_part();
  }
}

}  // namespace strata::io::detail
