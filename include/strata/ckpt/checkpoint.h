// Checkpoints: each rank writes its own shards from whatever tier holds them; the save
// is atomic and checksummed; a checkpoint loads at any world size, stage or chunk size.
//
//   ckpt::SaveOptions so{.root = out / "checkpoints", .keep = 3, .client = {{"data", pos}}};
//   STRATA_ASSIGN_OR_RETURN(fs::path dir, ckpt::save_checkpoint(*eng, so));   // every rank
//   ...
//   STRATA_ASSIGN_OR_RETURN(ckpt::Loaded l, ckpt::load_checkpoint(*eng, root)); // every rank
//   // l.meta.step, l.meta.client: what the caller saved with it
//
// Layout (docs/checkpoints.md): root/step-N/ holds meta.json (+ meta.xxh3), one data file
// per shard rank (rank-00000.bin, ...), params.bin for parameters kept outside the
// chunks and buffers.bin for the model's buffers; root/latest names the newest complete one.
//
// Note [checkpoint commit]: every rank writes into root/step-N.tmp/ and fsyncs its file;
// the ranks then exchange their outcome, so a failure anywhere fails the save on every
// rank with the first rank's error. Rank 0 writes meta.json last, fsyncs the directory,
// renames it to step-N, fsyncs root, and only then replaces root/latest (written as
// latest.tmp, fsynced, renamed). A crash at any moment leaves either no step-N (a stale
// step-N.tmp, removed by the next save) or a complete one, and latest always names a
// complete checkpoint. Older checkpoints beyond `keep` are removed after that.
//
// Note [checkpoint resharding]: records are fp32 chunk shards. A loading rank maps each
// parameter slice of its own shards, by parameter name and element range, to the saved
// chunk, shard rank and byte offset that hold it, and reads just those bytes (whole 1 MiB
// blocks, each verified against its checksum). One chunk's shard is in memory at a time.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

#include <nlohmann/json.hpp>

#include "strata/base/status.h"
#include "strata/ckpt/meta.h"
#include "strata/engine/engine.h"

namespace strata::io {
class FaultInjector;
}

namespace strata::ckpt {

// A module buffer by its state_dict name (batch norm's running_mean, ...). Parameters are
// the engine's; buffers are the caller's, so the caller names them.
struct NamedBuffer {
  std::string name;
  at::Tensor value;
};

struct SaveOptions {
  std::filesystem::path root;  // the checkpoints directory
  std::int64_t step = -1;      // its name, root/step-<step>; -1: the optimizer steps applied
  int keep = 0;                // keep the newest `keep` checkpoints (0: every one)
  bool update_latest = true;   // false: root/latest keeps naming the one before (DeepSpeed's save_latest)
  nlohmann::json config;       // the run's config, recorded as given
  nlohmann::json client;       // the caller's own state, returned by load_checkpoint
  // The model's buffers: rank 0's, whole, in their own dtypes (buffers.bin). As under DDP
  // and DeepSpeed, ranks are expected to hold the same values.
  std::vector<NamedBuffer> buffers;
  // Tests: called at each named point of the save ("begin", "shard": the first chunk
  // written, "written": every rank; "meta", "renamed", "latest": rank 0), e.g. to kill
  // the process there.
  std::function<void(std::string_view point)> on_point;
  std::shared_ptr<io::FaultInjector> faults;  // tests: I/O faults in this rank's data file
};

// Saves the engine's state as root/step-<step>. Every rank calls it.
Result<std::filesystem::path> save_checkpoint(engine::Engine& eng, const SaveOptions& o);

struct LoadOptions {
  bool optimizer_states = true;  // false: masters only; optimizer state starts fresh
  // The parameters only (DeepSpeed's load_module_only, to fine-tune from a checkpoint):
  // as optimizer_states false, and the engine's step count stays its own.
  bool module_only = false;
  // Filled in place, by name, on every rank. They must be the saved buffers, by name and
  // shape (the dtype may differ: values are converted). A checkpoint saved before
  // checkpoints held buffers leaves them as they are, with a warning.
  std::vector<NamedBuffer> buffers;
};

struct Loaded {
  std::filesystem::path dir;
  CheckpointMeta meta;
};

// `path` is a checkpoint (a step-N directory) or a checkpoints root (its latest).
Result<std::filesystem::path> resolve_checkpoint(const std::filesystem::path& path);
// The newest complete checkpoint's step under root, if any.
std::optional<std::int64_t> latest_step(const std::filesystem::path& root);

// Loads a checkpoint saved at any world size, stage or chunk size into the engine.
// Every rank calls it. Parameters are matched by name; a model that differs is refused
// with the names and shapes that differ.
Result<Loaded> load_checkpoint(engine::Engine& eng, const std::filesystem::path& path, const LoadOptions& o = {});

}  // namespace strata::ckpt
