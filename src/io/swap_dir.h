// The per-rank swap directory: nvme_path/strata-<job>/rank<k>/, its lock, and what a
// crashed run left in it. Not a public header.
//
// Note [swap directory lock]: `rank<k>/lock` is held with flock(LOCK_EX) for the
// store's lifetime and holds one line naming the owner (pid, run id, host, start
// time). flock is released by the kernel when a process dies, however it dies, so:
//   - a lock we cannot take belongs to a live store: opening fails (two processes
//     must never share swap files), naming the owner;
//   - a lock we can take over existing *.swp files, or over a non-empty owner line,
//     means the previous owner did not shut down cleanly. Its files are reported
//     (log warning, SwapStore::stale_files()) and deleted, never read: swap files hold
//     no state that outlives a run (checkpoints do that), and nothing in them can be
//     trusted after a crash. Files that are not *.swp are reported and left alone.
// A clean shutdown removes the files, the lock, the rank directory, and the job
// directory once the last rank has gone.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "strata/io/swap_store.h"

namespace strata::io::detail {

class RankDir {
 public:
  // Creates the directory, takes the lock, clears and reports stale files, and writes
  // this run's owner line.
  static Result<RankDir> open(const std::string& nvme_path, const std::string& job, int rank, std::uint64_t run_id,
                              std::vector<StaleFile>* stale);

  RankDir() = default;
  RankDir(RankDir&& other) noexcept { swap(other); }
  RankDir& operator=(RankDir&& other) noexcept {
    RankDir(std::move(other)).swap(*this);
    return *this;
  }
  ~RankDir();  // releases the lock; removes nothing (see remove())

  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

  // Clean shutdown: deletes `files`, the lock, and the directories if empty.
  Status remove(const std::vector<std::string>& files);

  void swap(RankDir& o) noexcept {
    std::swap(job_dir_, o.job_dir_);
    std::swap(path_, o.path_);
    std::swap(lock_fd_, o.lock_fd_);
  }

 private:
  std::string job_dir_, path_;
  int lock_fd_ = -1;
};

// "strata-<job>" with anything but [A-Za-z0-9._-] replaced by '_'.
std::string job_dir_name(const std::string& job);

}  // namespace strata::io::detail
