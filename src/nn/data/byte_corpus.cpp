#include "strata/nn/data/byte_corpus.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>

#include <ATen/ATen.h>

#include "strata/base/splitmix.h"
#include "strata/base/units.h"

namespace strata::nn {
namespace {

constexpr std::uint64_t kBlock = 4096;
constexpr std::uint64_t kSplitSeed = 0x5eed5eed5eedULL;

}  // namespace

struct ByteCorpus::Impl {
  struct MappedFile {
    std::string path;
    const std::uint8_t* data = nullptr;
    std::uint64_t size = 0;
  };
  // A contiguous range of the concatenated corpus that belongs to one split and does
  // not cross a file boundary.
  struct Run {
    std::size_t file;
    std::uint64_t offset;  // within the file
    std::uint64_t length;
  };

  std::vector<MappedFile> files;
  std::vector<Run> runs[2];
  std::uint64_t bytes[2] = {0, 0};

  ~Impl() {
    for (auto& f : files)
      if (f.data != nullptr) ::munmap(const_cast<std::uint8_t*>(f.data), f.size);
  }
};

ByteCorpus::ByteCorpus(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ByteCorpus::ByteCorpus(ByteCorpus&&) noexcept = default;
ByteCorpus& ByteCorpus::operator=(ByteCorpus&&) noexcept = default;
ByteCorpus::~ByteCorpus() = default;

std::uint64_t ByteCorpus::total_bytes() const { return impl_->bytes[0] + impl_->bytes[1]; }
std::uint64_t ByteCorpus::split_bytes(Split s) const { return impl_->bytes[s == Split::kValidation]; }
std::size_t ByteCorpus::file_count() const { return impl_->files.size(); }

Result<ByteCorpus> ByteCorpus::open(const std::string& path, int val_every) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto st = fs::status(path, ec);
  if (ec || !fs::exists(st)) return make_error(ErrorCode::kNotFound, "data path does not exist").with_path(path);
  std::vector<std::string> candidates;
  if (fs::is_directory(st)) {
    for (auto it = fs::recursive_directory_iterator(path, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_regular_file(ec) && !it->is_symlink(ec)) candidates.push_back(it->path().string());
    }
    if (ec) return make_error(errno_error(ec.value(), "cannot list the data folder")).with_path(path);
    std::sort(candidates.begin(), candidates.end());  // a fixed order: the split depends on it
  } else if (fs::is_regular_file(st)) {
    candidates.push_back(path);
  } else {
    // A FIFO or a device would block the open or the map with no output.
    return make_error(ErrorCode::kInvalidArgument, "data path is not a regular file or a folder (a pipe or a device?); "
                      "strata maps its data, so give a file or a folder of text files").with_path(path);
  }

  auto impl = std::make_unique<Impl>();
  std::string last_error;
  for (const auto& file : candidates) {
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      last_error = fmt::format("{}: {}", file, std::strerror(errno));
      if (candidates.size() == 1) return make_error(errno_error(errno, "cannot read the data file")).with_path(file);
      continue;
    }
    struct stat sb {};
    ::fstat(fd, &sb);
    const auto size = static_cast<std::uint64_t>(sb.st_size);
    if (size == 0 || !S_ISREG(sb.st_mode)) {
      ::close(fd);
      continue;
    }
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) {
      last_error = fmt::format("{}: {}", file, std::strerror(errno));
      continue;
    }
    const auto* bytes = static_cast<const std::uint8_t*>(p);
    // Text only: a NUL in the first 4 KiB marks a binary file (fortune's .dat index).
    if (std::memchr(bytes, 0, std::min<std::uint64_t>(size, 4096)) != nullptr) {
      ::munmap(p, size);
      continue;
    }
    ::madvise(p, size, MADV_RANDOM);
    impl->files.push_back({file, bytes, size});
  }
  if (impl->files.empty()) {
    std::string why = last_error.empty() ? "no non-empty text files" : "no readable text files (" + last_error + ")";
    return make_error(ErrorCode::kInvalidArgument, "data path has {}", why).with_path(path);
  }

  // Cut every file into blocks; consecutive blocks of one split form a run.
  auto add = [&impl](int split, std::size_t f, std::uint64_t off, std::uint64_t len) {
    auto& runs = impl->runs[split];
    if (!runs.empty() && runs.back().file == f && runs.back().offset + runs.back().length == off) {
      runs.back().length += len;
    } else {
      runs.push_back({f, off, len});
    }
    impl->bytes[split] += len;
  };
  std::uint64_t global = 0;
  for (std::size_t f = 0; f < impl->files.size(); ++f) {
    const std::uint64_t size = impl->files[f].size;
    for (std::uint64_t off = 0; off < size; off += kBlock, ++global) {
      const int split = splitmix64(kSplitSeed ^ global) % static_cast<std::uint64_t>(val_every) == 0 ? 1 : 0;
      add(split, f, off, std::min(kBlock, size - off));
    }
  }
  // A small corpus (a few blocks) can draw no validation block, or only a short last
  // one, or nothing but validation: then the validation split is the corpus's tail
  // instead, 1/val_every of it but at least a block (at most half), so that a 1 KB file
  // still has both splits.
  if (impl->bytes[0] < kBlock || impl->bytes[1] < kBlock) {
    const std::uint64_t total = impl->bytes[0] + impl->bytes[1];
    const std::uint64_t val = std::max(total / static_cast<std::uint64_t>(val_every), std::min(total / 2, kBlock));
    impl->runs[0].clear(), impl->runs[1].clear();
    impl->bytes[0] = impl->bytes[1] = 0;
    std::uint64_t at = 0;
    for (std::size_t f = 0; f < impl->files.size(); ++f) {
      const std::uint64_t size = impl->files[f].size;
      const std::uint64_t train_end = std::clamp(total - val, at, at + size) - at;  // this file's train bytes
      if (train_end > 0) add(0, f, 0, train_end);
      if (train_end < size) add(1, f, train_end, size - train_end);
      at += size;
    }
  }
  return ByteCorpus(std::move(impl));
}

Result<Batch> ByteCorpus::sample(Split split, std::int64_t batch, std::int64_t seq, SampleKey key) const {
  if (batch < 1 || seq < 1) return make_error(ErrorCode::kInvalidArgument, "batch and seq must be >= 1");
  const auto& runs = impl_->runs[split == Split::kValidation];
  const std::uint64_t window = static_cast<std::uint64_t>(seq) + 1;
  // Start positions available in each run; sampling is uniform over all of them.
  std::vector<std::uint64_t> cumulative;
  std::uint64_t starts = 0;
  for (const Impl::Run& r : runs) {
    starts += r.length >= window ? r.length - window + 1 : 0;
    cumulative.push_back(starts);
  }
  if (starts == 0) {
    return make_error(ErrorCode::kInvalidArgument, "the {} split ({}) has no stretch of {} bytes for one sequence",
                      split == Split::kValidation ? "validation" : "train", format_bytes(split_bytes(split)), window);
  }
  at::Tensor data = at::empty({batch, seq + 1}, at::kLong);
  std::int64_t* out = data.data_ptr<std::int64_t>();
  std::uint64_t state = splitmix64(splitmix64(splitmix64(key.seed) ^ key.step) ^ key.stream);
  for (std::int64_t b = 0; b < batch; ++b) {
    state = splitmix64(state);
    const std::uint64_t pick = state % starts;
    const auto it = std::upper_bound(cumulative.begin(), cumulative.end(), pick);
    const std::size_t r = static_cast<std::size_t>(it - cumulative.begin());
    const std::uint64_t before = r == 0 ? 0 : cumulative[r - 1];
    const Impl::Run& run = runs[r];
    const std::uint8_t* src = impl_->files[run.file].data + run.offset + (pick - before);
    for (std::uint64_t i = 0; i < window; ++i) out[b * (seq + 1) + static_cast<std::int64_t>(i)] = src[i];
  }
  return Batch{data.slice(1, 0, seq).contiguous(), data.slice(1, 1, seq + 1).contiguous()};
}

}  // namespace strata::nn
