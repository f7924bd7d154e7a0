// Offline checkpoint tools behind `strata ckpt`: no engine, no ranks, bounded memory.
//
//   auto files = ckpt::verify_checkpoint(dir);                    // every checksum
//   ckpt::export_safetensors(dir, {.out = "model.safetensors", .dtype = at::kBFloat16});
//   ckpt::reshard_checkpoint(dir, /*world=*/8, "resharded/");    // a new checkpoints root
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <c10/core/ScalarType.h>

#include "strata/base/status.h"
#include "strata/ckpt/meta.h"

namespace strata::ckpt {

// Each data file's outcome (meta.json's own checksum is checked first: its failure is
// the error). `dir` is a checkpoint or a checkpoints root.
Result<std::vector<std::pair<std::string, Status>>> verify_checkpoint(const std::filesystem::path& dir);

struct ExportName {
  std::string name;
  bool transpose = false;  // a 2-D weight stored [out, in] written as [in, out]
};

struct ExportOptions {
  std::filesystem::path out;
  c10::ScalarType dtype = c10::ScalarType::BFloat16;  // or Float
  // The tensor's name in the file (nullopt: the saved name), e.g. GPT-2's layout.
  std::function<std::optional<ExportName>(const ParamMeta&)> rename;
  std::int64_t piece_elems = 1 << 20;  // read, converted and written this many at a time
};

struct ExportResult {
  std::size_t tensors = 0;
  std::uint64_t bytes = 0;  // of the file
};

// The consolidated weights (the fp32 masters, frozen parameters' values) as one
// safetensors file: an 8-byte little-endian header length, the JSON header, then each
// tensor's raw little-endian data. One tensor piece in memory at a time (a transposed
// tensor whole), through 8 MiB of staging buffers. Written to out.tmp, fsynced, renamed.
Result<ExportResult> export_safetensors(const std::filesystem::path& dir, const ExportOptions& o);

// The checkpoint re-cut for `world` shard ranks (the same chunks, padded to a multiple
// of it), written atomically as out_root/step-N with out_root/latest. One chunk shard in
// memory at a time. Any checkpoint loads at any world size without this; it is for
// tools that read one rank's file.
Result<std::filesystem::path> reshard_checkpoint(const std::filesystem::path& dir, int world,
                                                 const std::filesystem::path& out_root);

}  // namespace strata::ckpt
