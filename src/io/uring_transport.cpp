// The io_uring transport: one ring per worker, fixed files and buffers when the kernel
// offers sparse registration tables, and an eventfd poll so that a worker blocked in
// the ring can be woken for new work.
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <thread>
#include <cstdio>
#include <cstdlib>

#include "engine_internal.h"
#include "strata/base/log.h"

namespace strata::io::detail {
namespace {

// user_data of the eventfd poll; slots are small integers, so this never collides.
constexpr std::uint64_t kWakeTag = ~std::uint64_t{0};

class UringTransport final : public Transport {
 public:
  UringTransport(bool single_submit) : single_submit_(single_submit) {}

  Status init(int queue_depth, int max_files, int max_bufs, UringCaps* caps) {
    // Slots plus the wake poll: prepare() can always get an SQE without submitting.
    const unsigned entries = static_cast<unsigned>(queue_depth) + 2;
    if (int rc = io_uring_queue_init(entries, &ring_, 0); rc < 0) return make_error(errno_error(-rc, "io_uring_queue_init"));
    ring_ok_ = true;
    efd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd_ < 0) return make_error(errno_error(errno, "eventfd"));
    arm_wake();
    caps->files = io_uring_register_files_sparse(&ring_, static_cast<unsigned>(max_files)) == 0;
    caps->buffers = io_uring_register_buffers_sparse(&ring_, static_cast<unsigned>(max_bufs)) == 0;
    return ok();
  }

  ~UringTransport() override {
    if (efd_ >= 0) ::close(efd_);
    if (ring_ok_) io_uring_queue_exit(&ring_);
  }

  void prepare(std::uint32_t slot, const PieceIo& io) override {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {  // cannot happen: the ring has room for every slot
      std::fprintf(stderr, "strata: io_uring SQ full with %u prepared\n", prepared_);
      std::abort();
    }
    const int fd = io.fixed_file >= 0 ? io.fixed_file : io.fd;
    if (io.fixed_buf >= 0) {
      if (io.write) io_uring_prep_write_fixed(sqe, fd, io.buf, io.length, io.offset, io.fixed_buf);
      else io_uring_prep_read_fixed(sqe, fd, io.buf, io.length, io.offset, io.fixed_buf);
    } else {
      if (io.write) io_uring_prep_write(sqe, fd, io.buf, io.length, io.offset);
      else io_uring_prep_read(sqe, fd, io.buf, io.length, io.offset);
    }
    if (io.fixed_file >= 0) sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, slot);
    ++prepared_;
    if (single_submit_) flush();
  }

  void flush() override {
    while (prepared_ > 0) {
      const int rc = io_uring_submit(&ring_);
      if (rc >= 0) {
        prepared_ = 0;  // everything in the SQ ring is now the kernel's
        return;
      }
      // EINTR: try again. EAGAIN/EBUSY: the kernel is short of resources or the CQ is
      // backed up; the entries stay in the SQ ring and go with the next submit.
      if (rc == -EINTR) continue;
      if (rc == -EAGAIN || rc == -EBUSY) return;
      fatal("io_uring_submit", rc);
    }
  }

  void wait(std::vector<Completion>& out) override {
    io_uring_cqe* cqe = nullptr;
    for (;;) {
      // Submits anything left in the SQ ring (after EAGAIN/EBUSY) and waits for one.
      const int rc = prepared_ > 0 ? io_uring_submit_and_wait(&ring_, 1) : io_uring_wait_cqe(&ring_, &cqe);
      if (rc >= 0) {
        prepared_ = 0;
        break;
      }
      if (rc == -EINTR) continue;
      if (rc == -EAGAIN || rc == -EBUSY) {
        // The kernel is short of resources: reap what has completed, or back off
        // briefly rather than spin on the syscall.
        if (io_uring_cq_ready(&ring_) > 0) break;
        std::this_thread::sleep_for(std::chrono::microseconds(50));
        continue;
      }
      fatal("io_uring wait", rc);
    }
    unsigned head = 0, seen = 0;
    bool rearm = false;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++seen;
      const std::uint64_t tag = io_uring_cqe_get_data64(cqe);
      if (tag == kWakeTag) {
        std::uint64_t v = 0;
        while (::read(efd_, &v, sizeof v) == static_cast<ssize_t>(sizeof v)) {
        }
        rearm = true;
        continue;
      }
      out.push_back(Completion{static_cast<std::uint32_t>(tag), cqe->res});
    }
    io_uring_cq_advance(&ring_, seen);
    if (rearm) arm_wake();  // submitted with the next flush or wait
  }

  void wake() override {
    const std::uint64_t one = 1;
    // The counter cannot overflow in practice; a failed write only delays the worker
    // until its next completion.
    [[maybe_unused]] ssize_t n = ::write(efd_, &one, sizeof one);
  }

  Status update_file(int index, int fd) override {
    int rc = io_uring_register_files_update(&ring_, static_cast<unsigned>(index), &fd, 1);
    if (rc < 0) return make_error(errno_error(-rc, "io_uring_register_files_update"));
    return ok();
  }

  Status update_buffers(int index, const std::vector<iovec>& iovs) override {
    int rc = io_uring_register_buffers_update_tag(&ring_, static_cast<unsigned>(index), iovs.data(), nullptr,
                                                  static_cast<unsigned>(iovs.size()));
    if (rc < 0) return make_error(errno_error(-rc, "io_uring_register_buffers_update_tag"));
    return ok();
  }

 private:
  void arm_wake() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
      std::fprintf(stderr, "strata: io_uring SQ full arming the wake poll\n");
      std::abort();
    }
    io_uring_prep_poll_add(sqe, efd_, POLLIN);
    io_uring_sqe_set_data64(sqe, kWakeTag);
    ++prepared_;
  }

  [[noreturn]] static void fatal(const char* what, int rc) {
    // Only a bug (bad fd, bad pointer) makes the ring itself fail; per-piece errors
    // arrive in completions. Carrying on would strand pieces whose buffers the kernel
    // owns, so stop loudly.
    std::fprintf(stderr, "strata: %s failed: %s\n", what, errno_error(-rc, what).to_string().c_str());
    std::abort();
  }

  io_uring ring_{};
  bool ring_ok_ = false;
  int efd_ = -1;
  unsigned prepared_ = 0;
  const bool single_submit_;
};

}  // namespace

Result<std::unique_ptr<Transport>> make_uring_transport(int queue_depth, bool single_submit, int max_files,
                                                        int max_bufs, UringCaps* caps) {
  auto t = std::make_unique<UringTransport>(single_submit);
  STRATA_RETURN_IF_ERROR(t->init(queue_depth, max_files, max_bufs, caps));
  return std::unique_ptr<Transport>(std::move(t));
}

}  // namespace strata::io::detail
