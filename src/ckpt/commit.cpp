#include "commit.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "strata/base/log.h"
#include "strata/ckpt/checkpoint.h"

namespace strata::ckpt {
namespace fs = std::filesystem;

std::string step_name(std::int64_t step) { return fmt::format("step-{}", step); }

std::optional<std::int64_t> parse_step_name(std::string_view name) {
  if (!name.starts_with("step-")) return std::nullopt;
  name.remove_prefix(5);
  std::int64_t v = 0;
  auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), v);
  if (ec != std::errc() || end != name.data() + name.size() || v < 0) return std::nullopt;
  return v;
}

Status fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return make_error(errno_error(errno, "open directory")).with_path(dir.string());
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return make_error(errno_error(err, "fsync directory")).with_path(dir.string());
  return ok();
}

Status write_synced(const fs::path& path, std::string_view text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return make_error(errno_error(errno, "create")).with_path(path.string());
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      ::close(fd);
      return make_error(errno_error(err, "write")).with_path(path.string());
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    return make_error(errno_error(err, "fsync")).with_path(path.string());
  }
  if (::close(fd) != 0) return make_error(errno_error(errno, "close")).with_path(path.string());
  return ok();
}

Status write_durable(const fs::path& dir, std::string_view name, std::string_view text) {
  const fs::path tmp = dir / (std::string(name) + ".tmp"), dst = dir / name;
  STRATA_RETURN_IF_ERROR(write_synced(tmp, text));
  std::error_code ec;
  fs::rename(tmp, dst, ec);
  if (ec) return make_error(ErrorCode::kIoError, "rename: {}", ec.message()).with_path(dst.string());
  return fsync_dir(dir);
}

std::vector<std::int64_t> saved_steps(const fs::path& root) {
  std::vector<std::int64_t> steps;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    if (!e.is_directory(ec)) continue;
    if (auto s = parse_step_name(e.path().filename().string())) steps.push_back(*s);
  }
  std::ranges::sort(steps);
  return steps;
}

std::optional<std::int64_t> latest_step(const fs::path& root) {
  std::ifstream in(root / "latest");
  std::string name;
  if (!(in >> name)) return std::nullopt;
  return parse_step_name(name);
}

namespace {

// Note [checkpoint pruning]: removing an old checkpoint deletes gigabytes (about 0.25 s
// for 1.26 GB on the development disk), which training need not wait for. prune()
// renames each victim to root/.trash-<name>-<pid> (instant, and no longer a checkpoint)
// and this thread deletes it; the process waits for the thread at exit. A crash leaves
// .trash-* directories behind, which the next prune() deletes.
class Trash {
 public:
  static Trash& get() {
    static Trash t;
    return t;
  }
  void add(fs::path p) {
    std::lock_guard lock(mu_);
    if (!worker_.joinable()) worker_ = std::thread([this] { run(); });
    queue_.push_back(std::move(p));
    cv_.notify_one();
  }
  ~Trash() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
      cv_.notify_one();
    }
    if (worker_.joinable()) worker_.join();
  }

 private:
  void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      fs::path p = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      std::error_code ec;
      fs::remove_all(p, ec);
      if (ec) log::warn("could not remove the old checkpoint {}: {}", p.string(), ec.message());
      lock.lock();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<fs::path> queue_;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace

namespace {
void discard(const fs::path& dir, const std::string& name) {
  std::error_code ec;
  const fs::path trash = dir.parent_path() / fmt::format(".trash-{}-{}", name, ::getpid());
  fs::rename(dir, trash, ec);
  if (ec) log::warn("could not remove the old checkpoint {}: {}", dir.string(), ec.message());
  else Trash::get().add(trash);
}
}  // namespace

Status install(const fs::path& tmp, const fs::path& dst) {
  std::error_code ec;
  if (!fs::exists(dst, ec)) {
    fs::rename(tmp, dst, ec);
    if (ec) return make_error(ErrorCode::kIoError, "rename: {}", ec.message()).with_path(dst.string());
    return ok();
  }
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dst.c_str(), RENAME_EXCHANGE) != 0)
    return make_error(errno_error(errno, "rename (exchange)")).with_path(dst.string());
  discard(tmp, dst.filename().string() + "-replaced");  // tmp now holds the old one
  return ok();
}

void prune(const fs::path& root, int keep) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec))  // left by a crash
    if (e.path().filename().string().starts_with(".trash-")) Trash::get().add(e.path());
  if (keep <= 0) return;
  std::vector<std::int64_t> steps = saved_steps(root);
  const std::optional<std::int64_t> latest = latest_step(root);
  std::size_t excess = steps.size() > static_cast<std::size_t>(keep) ? steps.size() - static_cast<std::size_t>(keep) : 0;
  for (std::int64_t s : steps) {
    if (excess == 0) break;
    if (latest && s == *latest) continue;
    discard(root / step_name(s), step_name(s));
    --excess;
  }
}

}  // namespace strata::ckpt
