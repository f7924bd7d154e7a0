// The portable transport: a group of threads, each running one blocking pread or
// pwrite at a time. It takes over when io_uring does not work (an old kernel, a
// seccomp filter, a filesystem the probe rejects) and is selectable explicitly, so the
// same tests run on both backends. One call per piece, no loop: short transfers and
// EINTR go back to the worker, which resubmits them exactly as for io_uring.
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "engine_internal.h"

namespace strata::io::detail {
namespace {

class ThreadTransport final : public Transport {
 public:
  ThreadTransport(int threads, bool single_submit) : single_submit_(single_submit) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { loop(); });
  }

  ~ThreadTransport() override {
    {
      std::lock_guard lock(sq_mu_);
      stopping_ = true;
    }
    sq_cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  void prepare(std::uint32_t slot, const PieceIo& io) override {
    if (single_submit_) {
      {
        std::lock_guard lock(sq_mu_);
        sq_.push_back({slot, io});
      }
      sq_cv_.notify_one();
    } else {
      batch_.push_back({slot, io});
    }
  }

  void flush() override {
    if (batch_.empty()) return;
    {
      std::lock_guard lock(sq_mu_);
      for (auto& job : batch_) sq_.push_back(job);
    }
    batch_.clear();
    sq_cv_.notify_all();
  }

  void wait(std::vector<Completion>& out) override {
    std::unique_lock lock(cq_mu_);
    cq_cv_.wait(lock, [&] { return woken_ || !cq_.empty(); });
    woken_ = false;
    for (const Completion& c : cq_) out.push_back(c);
    cq_.clear();
  }

  void wake() override {
    {
      std::lock_guard lock(cq_mu_);
      woken_ = true;
    }
    cq_cv_.notify_one();
  }

  // Never called: the engine reports no registered files or buffers for this backend.
  Status update_file(int, int) override { return ok(); }
  Status update_buffers(int, const std::vector<iovec>&) override { return ok(); }

 private:
  struct Job {
    std::uint32_t slot;
    PieceIo io;
  };

  void loop() {
    for (;;) {
      Job job;
      {
        std::unique_lock lock(sq_mu_);
        sq_cv_.wait(lock, [&] { return stopping_ || !sq_.empty(); });
        if (sq_.empty()) return;
        job = sq_.front();
        sq_.pop_front();
      }
      const PieceIo& io = job.io;
      const ssize_t n = io.write ? ::pwrite(io.fd, io.buf, io.length, static_cast<off_t>(io.offset))
                                 : ::pread(io.fd, io.buf, io.length, static_cast<off_t>(io.offset));
      const int res = n < 0 ? -errno : static_cast<int>(n);
      {
        std::lock_guard lock(cq_mu_);
        cq_.push_back(Completion{job.slot, res});
      }
      cq_cv_.notify_one();
    }
  }

  const bool single_submit_;
  std::vector<Job> batch_;  // worker thread only

  std::mutex sq_mu_;
  std::condition_variable sq_cv_;
  std::deque<Job> sq_;
  bool stopping_ = false;

  std::mutex cq_mu_;
  std::condition_variable cq_cv_;
  std::vector<Completion> cq_;
  bool woken_ = false;

  std::vector<std::thread> threads_;
};

}  // namespace

std::unique_ptr<Transport> make_thread_transport(int threads, bool single_submit) {
  return std::make_unique<ThreadTransport>(threads, single_submit);
}

}  // namespace strata::io::detail
