// A byte-level text corpus for language-model training, read lazily.
//
//   STRATA_ASSIGN_OR_RETURN(auto corpus, strata::nn::ByteCorpus::open("/data/books"));
//   auto batch = corpus.sample(Split::kTrain, /*batch=*/8, /*seq=*/128, /*key=*/{seed, step, rank});
//   at::Tensor loss = model->loss(batch.tokens, batch.targets);
//
// Tokens are bytes (vocabulary 256). A path may be a file or a folder (searched
// recursively; symlinks and files with NUL bytes in their first 4 KiB are skipped,
// which drops the fortunes package's .dat indexes and .u8 links). Files are memory
// mapped and windows are copied out on demand, so the corpus is never read whole.
//
// Train/validation split: the concatenated corpus is cut into 4 KiB blocks and every
// block whose hash (seeded by a fixed split seed) falls in the last 1/val_every goes to
// validation. The split depends only on the corpus bytes' layout, not on the job. A
// corpus so small that either split drew less than a block takes its tail as validation instead
// (1/val_every of it, at least 4 KiB, at most half).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "strata/base/status.h"

namespace strata::nn {

enum class Split { kTrain, kValidation };

// Where the default corpus lives: Debian's fortunes package.
inline constexpr const char* kFortunesDir = "/usr/share/games/fortunes";

struct SampleKey {
  std::uint64_t seed = 0;
  std::uint64_t step = 0;
  std::uint64_t stream = 0;  // rank, micro-batch, ...: anything that must draw differently
};

struct Batch {
  at::Tensor tokens;   // int64 [batch, seq]
  at::Tensor targets;  // int64 [batch, seq]: tokens shifted by one
};

class ByteCorpus {
 public:
  static Result<ByteCorpus> open(const std::string& path, int val_every = 20);
  ByteCorpus(ByteCorpus&&) noexcept;
  ByteCorpus& operator=(ByteCorpus&&) noexcept;
  ~ByteCorpus();

  std::uint64_t total_bytes() const;
  std::uint64_t split_bytes(Split s) const;
  std::size_t file_count() const;

  // `batch` windows of seq+1 bytes drawn uniformly from the split, each inside one
  // contiguous run of that split. Same key, same batch. Errors if the split has no
  // run long enough for one window.
  Result<Batch> sample(Split split, std::int64_t batch, std::int64_t seq, SampleKey key) const;

 private:
  struct Impl;
  explicit ByteCorpus(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata::nn
