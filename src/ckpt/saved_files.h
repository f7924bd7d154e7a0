// SavedFiles: a checkpoint's data files, opened (and their sizes checked) on first use,
// and any saved parameter's elements read from wherever the saved layout put them.
// Internal to src/ckpt (loading, export, resharding).
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <string_view>

#include <c10/core/ScalarType.h>

#include "strata/ckpt/meta.h"
#include "strata/ckpt/shard_file.h"

namespace strata::ckpt {

// A saved buffer's dtype (BufferMeta::dtype, c10's name); kDataLoss naming it if unknown.
Result<c10::ScalarType> buffer_dtype(const BufferMeta& b);

class SavedFiles {
 public:
  SavedFiles(std::filesystem::path dir, const CheckpointMeta& m) : dir_(std::move(dir)), meta_(m) {}

  // n fp32 elements of saved parameter `p` from element `from`, of `tensor` ("master",
  // a state name, or "values"; a frozen chunk's values stand for its master and a
  // trained chunk's master for its values).
  Status read_param(std::size_t p, std::string_view tensor, std::int64_t from, std::int64_t n, float* out);
  // n fp32 elements of chunk c's `tensor` from chunk element `from`, across shard ranks.
  Status read_chunk(std::int64_t c, std::string_view tensor, std::int64_t from, std::int64_t n, float* out);
  // Saved buffer `b` (CheckpointMeta::buffers), out.size() bytes: all of it.
  Status read_buffer(std::size_t b, std::span<std::byte> out);
  // Every byte of one file against its checksums.
  Status verify(const FileMeta& f);

 private:
  Status missing(const std::string& what) const;
  Result<ShardFileReader*> reader(const FileMeta& f);
  Status read_span(const FileMeta& f, const RecordMeta& r, std::int64_t from, std::int64_t n, float* out);

  std::filesystem::path dir_;
  const CheckpointMeta& meta_;
  std::map<std::string, ShardFileReader> open_;
};

}  // namespace strata::ckpt
