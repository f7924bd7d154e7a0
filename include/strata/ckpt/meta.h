// CheckpointMeta: a checkpoint's meta.json — the layout the shards were saved in, every
// parameter's name, shape and place, the training state, and each data file's records
// and checksums. docs/checkpoints.md describes the format for other readers.
//
//   STRATA_ASSIGN_OR_RETURN(CheckpointMeta m, read_meta(dir / "meta.json"));
//   const FileMeta* f = m.file_of(shard_rank);          // the rank's data file
//   const RecordMeta* r = f->find(chunk, "exp_avg");    // a record in it
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "strata/base/status.h"
#include "strata/ckpt/shard_file.h"
#include "strata/engine/loss_scaler.h"

namespace strata::ckpt {

inline constexpr int kFormatVersion = 1;
inline constexpr const char* kFormatName = "strata-checkpoint";

// One tensor shard in a data file: tensor "master", a state name ("exp_avg", ...), or
// "values" (a frozen chunk's parameters); of chunk `chunk`, or (chunk -1) the whole
// parameter `param` kept outside the chunks.
struct RecordMeta {
  std::int64_t chunk = -1;
  std::int64_t param = -1;
  std::string tensor;
  std::uint64_t elems = 0;  // fp32 elements
  RecordSpan span;
};

struct FileMeta {
  std::string name;    // relative to the checkpoint directory
  int shard_rank = 0;  // kParamsFileRank: the parameters kept outside the chunks; kBuffersFileRank
  FileSum sum;
  std::vector<RecordMeta> records;
  const RecordMeta* find(std::int64_t chunk, std::string_view tensor) const;
  const RecordMeta* find_param(std::int64_t param) const;
};

struct ParamMeta {
  std::string name;
  std::vector<std::int64_t> shape;
  std::string dtype;  // the model's ("bf16", "fp32", ...); every record is fp32
  bool trainable = false;
  std::int64_t chunk = -1;  // -1: kept outside the chunks, whole, in the "params" file
  std::int64_t offset = 0;  // its first element within the chunk
  std::int64_t numel = 0;
  std::int64_t steps = 0;   // optimizer steps it has taken
  bool had_grad = false;
};

// A module buffer (batch norm's running statistics), saved whole from rank 0 in its own
// dtype in the buffers file: its record has chunk -1, param = its index here, tensor
// "buffer" and elems = its elements (of `dtype`, not fp32).
struct BufferMeta {
  std::string name;
  std::vector<std::int64_t> shape;
  std::string dtype;  // c10's name: "Float", "Long", "BFloat16", "Bool", ...
};

inline constexpr int kParamsFileRank = -1;   // FileMeta::shard_rank of params.bin
inline constexpr int kBuffersFileRank = -2;  // ... and of buffers.bin

struct ChunkMeta {
  std::int64_t elems = 0;        // padded to a multiple of shard_world
  std::int64_t shard_elems = 0;  // elems / shard_world
  bool trains = false;           // has master and optimizer state records, else "values"
};

struct CheckpointMeta {
  int version = kFormatVersion;
  std::int64_t step = 0;             // its name: step-<step>
  std::int64_t optimizer_steps = 0;  // optimizer steps applied (fewer when fp16 skipped some)
  int world = 1;          // ranks of the job that saved it
  int shard_world = 1;    // ranks the chunks were sharded over
  int stage = 0;
  std::string optimizer;
  std::vector<std::string> state_names;
  double lr = 0;
  // Note [parameter groups]: each group's lr scale (absent in checkpoints of one group).
  std::vector<double> lr_scales;
  // Each group's weight decay, Adam's betas and SGD's momentum, as the saved run had them
  // (a schedule may have moved them); empty and nullopt in checkpoints that predate them,
  // or for optimizers without them.
  std::vector<double> weight_decays;
  std::optional<std::array<double, 2>> betas;
  std::optional<double> momentum;
  std::string compute_dtype;
  engine::LossScaler::State loss_scaler;
  std::vector<ChunkMeta> chunks;
  std::vector<ParamMeta> params;
  // nullopt: saved before checkpoints held buffers (no "buffers" key in meta.json).
  std::optional<std::vector<BufferMeta>> buffers;
  std::vector<FileMeta> files;
  nlohmann::json config;  // the run's config, as given
  nlohmann::json client;  // the caller's state (strata train: data position, RNG, schedule)

  const FileMeta* file_of(int shard_rank) const;
  std::uint64_t data_bytes() const;
};

inline constexpr const char* kMetaFile = "meta.json";
inline constexpr const char* kMetaSumFile = "meta.xxh3";  // meta.json's XXH3-64, 16 hex digits

nlohmann::json to_json(const CheckpointMeta& m);
nlohmann::json files_to_json(std::span<const FileMeta> files);  // meta.json's "files"
Result<std::vector<FileMeta>> files_from_json(const nlohmann::json& j);
Result<CheckpointMeta> from_json(const nlohmann::json& j);
// What meta.xxh3 holds for a meta.json of this text.
std::string meta_checksum(std::string_view text);
// Reads dir/meta.json, checks it against dir/meta.xxh3 and parses it; errors name the file.
Result<CheckpointMeta> read_meta(const std::filesystem::path& dir);

}  // namespace strata::ckpt
