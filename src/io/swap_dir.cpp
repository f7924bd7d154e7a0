#include "swap_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <system_error>

#include "strata/base/log.h"
#include "strata/base/units.h"
#include "swap_format.h"

namespace strata::io::detail {
namespace fs = std::filesystem;
namespace {

std::string read_small_file(int fd) {
  std::string out(512, '\0');
  const ssize_t n = ::pread(fd, out.data(), out.size(), 0);
  out.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\0')) out.pop_back();
  return out;
}

std::string hostname() {
  char buf[256] = {};
  return ::gethostname(buf, sizeof buf - 1) == 0 ? std::string(buf) : "unknown";
}

// Describes a stale swap file from its header, read without O_DIRECT (we only look).
std::string describe_swap_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "unreadable: " + errno_error(errno, "open").message();
  std::vector<std::byte> block(kBlock);
  const ssize_t n = ::pread(fd, block.data(), block.size(), 0);
  ::close(fd);
  if (n < static_cast<ssize_t>(sizeof(FileHeader))) return "no complete file header";
  auto h = decode_file_header(block);
  if (!h) return h.error().message();
  const auto age = std::chrono::system_clock::now().time_since_epoch() - std::chrono::nanoseconds(h->created_unix_ns);
  return fmt::format("written by pid {} (run {:016x}, rank {}, job '{}') {} s ago", h->pid, h->run_id, h->rank,
                     std::string(h->job, strnlen(h->job, sizeof h->job)),
                     std::chrono::duration_cast<std::chrono::seconds>(age).count());
}

}  // namespace

std::string job_dir_name(const std::string& job) {
  std::string out = "strata-";
  for (char c : job) {
    const bool safe = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                      c == '_' || c == '-';
    out += safe ? c : '_';
  }
  return out;
}

Result<RankDir> RankDir::open(const std::string& nvme_path, const std::string& job, int rank, std::uint64_t run_id,
                              std::vector<StaleFile>* stale) {
  if (nvme_path.empty()) return make_error(ErrorCode::kInvalidArgument, "swap store needs an nvme_path");
  RankDir d;
  d.job_dir_ = nvme_path + "/" + job_dir_name(job);
  d.path_ = d.job_dir_ + "/rank" + std::to_string(rank);
  std::error_code ec;
  fs::create_directories(d.path_, ec);
  if (ec) {
    return make_error(errno_error(ec.value(), "creating the swap directory")).with_path(d.path_).with_rank(rank);
  }
  const std::string lock_path = d.file("lock");
  for (int attempt = 0;; ++attempt) {
    d.lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (d.lock_fd_ < 0) return make_error(errno_error(errno, "open")).with_path(lock_path).with_rank(rank);
    if (::flock(d.lock_fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      const std::string owner = read_small_file(d.lock_fd_);
      if (err == EWOULDBLOCK) {
        return make_error(ErrorCode::kFailedPrecondition,
                          "swap directory is in use by a live process ({}); two runs must not share job '{}' rank {}",
                          owner.empty() ? "owner unknown" : owner, job, rank)
            .with_path(d.path_)
            .with_rank(rank);
      }
      return make_error(errno_error(err, "flock")).with_path(lock_path).with_rank(rank);
    }
    // A store shutting down unlinks its lock; if we locked that unlinked inode, the
    // lock means nothing. Only a lock on the file the path names now counts.
    struct stat held {}, named {};
    if (::fstat(d.lock_fd_, &held) == 0 && ::stat(lock_path.c_str(), &named) == 0 && held.st_ino == named.st_ino &&
        held.st_dev == named.st_dev) {
      break;
    }
    ::close(d.lock_fd_);
    d.lock_fd_ = -1;
    if (attempt == 10) return make_error(ErrorCode::kUnavailable, "lock file keeps changing").with_path(lock_path);
  }

  // Note [swap directory lock]: we hold the lock, so anything here is from a dead run.
  const std::string previous_owner = read_small_file(d.lock_fd_);
  std::vector<StaleFile> found;
  for (const fs::directory_entry& e : fs::directory_iterator(d.path_, ec)) {
    const std::string name = e.path().filename().string();
    if (name == "lock") continue;
    StaleFile s;
    s.path = e.path().string();
    s.bytes = e.is_regular_file(ec) ? e.file_size(ec) : 0;
    if (e.path().extension() == ".swp" && e.is_regular_file(ec)) {
      s.owner = describe_swap_file(s.path);
      s.removed = fs::remove(e.path(), ec);
      if (ec) s.owner += "; could not remove: " + ec.message();
    } else {
      s.owner = "not a strata swap file; left in place";
    }
    found.push_back(std::move(s));
  }
  if (!found.empty() || !previous_owner.empty()) {
    std::uint64_t bytes = 0;
    for (const auto& s : found) bytes += s.bytes;
    log::warn("swap directory {} was not shut down cleanly (previous owner: {}); {} stale file(s), {}, not trusted:",
              d.path_, previous_owner.empty() ? "unknown" : previous_owner, found.size(), format_bytes(bytes));
    for (const auto& s : found) {
      log::warn("  {} ({}): {}{}", s.path, format_bytes(s.bytes), s.owner, s.removed ? "; removed" : "");
    }
    if (found.empty()) {
      found.push_back(StaleFile{lock_path, 0, "lock left by " + previous_owner + " (no swap files)", false});
    }
  }
  if (stale != nullptr) *stale = std::move(found);

  const auto now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  const std::string owner =
      fmt::format("pid {} run {:016x} host {} started_unix_ns {}\n", ::getpid(), run_id, hostname(), now_ns);
  if (::ftruncate(d.lock_fd_, 0) != 0 ||
      ::pwrite(d.lock_fd_, owner.data(), owner.size(), 0) != static_cast<ssize_t>(owner.size())) {
    return make_error(errno_error(errno, "writing the lock file")).with_path(lock_path);
  }
  return d;
}

RankDir::~RankDir() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // closing releases the flock
}

Status RankDir::remove(const std::vector<std::string>& files) {
  Status result = ok();
  auto keep_first = [&](Error e) {
    if (result) result = std::unexpected(std::move(e));
  };
  for (const std::string& f : files) {
    if (::unlink(f.c_str()) != 0 && errno != ENOENT) keep_first(errno_error(errno, "unlink").with_path(f));
  }
  const std::string lock_path = file("lock");
  if (::unlink(lock_path.c_str()) != 0 && errno != ENOENT) {
    keep_first(errno_error(errno, "unlink").with_path(lock_path));
  }
  if (lock_fd_ >= 0) {
    ::close(lock_fd_);
    lock_fd_ = -1;
  }
  // Other ranks may still use the job directory; ENOTEMPTY is the normal case there.
  if (::rmdir(path_.c_str()) != 0 && errno != ENOENT) keep_first(errno_error(errno, "rmdir").with_path(path_));
  if (::rmdir(job_dir_.c_str()) != 0 && errno != ENOENT && errno != ENOTEMPTY && errno != EEXIST) {
    keep_first(errno_error(errno, "rmdir").with_path(job_dir_));
  }
  return result;
}

}  // namespace strata::io::detail

namespace strata::io {

Result<std::vector<StaleFile>> remove_abandoned_swap(const std::string& nvme_path, const std::string& job) {
  namespace fs = std::filesystem;
  std::vector<StaleFile> removed;
  const fs::path job_dir = fs::path(nvme_path) / detail::job_dir_name(job);
  std::error_code ec;
  if (!fs::is_directory(job_dir, ec)) return removed;
  std::vector<int> ranks;
  for (const fs::directory_entry& e : fs::directory_iterator(job_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 4 && name.starts_with("rank") && name.find_first_not_of("0123456789", 4) == std::string::npos &&
        e.is_directory(ec)) {
      ranks.push_back(std::stoi(name.substr(4)));
    }
  }
  for (int rank : ranks) {
    // Opening takes the lock only when its owner is gone, and removes (and reports)
    // the stale swap files it finds; a live owner makes it fail, which is not an error
    // here.
    std::vector<StaleFile> stale;
    auto dir = detail::RankDir::open(nvme_path, job, rank, /*run_id=*/0, &stale);
    if (!dir) continue;
    STRATA_RETURN_IF_ERROR(dir->remove({}));
    for (StaleFile& f : stale)
      if (f.removed) removed.push_back(std::move(f));
  }
  return removed;
}

}  // namespace strata::io
