// The checkpoint directory protocol (Note [checkpoint commit] in checkpoint.h): durable
// small files, directory fsyncs, the latest pointer and pruning. Internal to src/ckpt.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string_view>
#include <vector>

#include "strata/base/status.h"

namespace strata::ckpt {

std::string step_name(std::int64_t step);  // "step-N"
std::optional<std::int64_t> parse_step_name(std::string_view name);

Status fsync_dir(const std::filesystem::path& dir);
// `text` into dir/name through dir/name.tmp: written, fsynced, renamed, dir fsynced.
Status write_durable(const std::filesystem::path& dir, std::string_view name, std::string_view text);
// The same without the rename: a file of the checkpoint being written.
Status write_synced(const std::filesystem::path& path, std::string_view text);
// Puts the complete checkpoint `tmp` at `dst`. When dst exists (a step saved again, as
// after resuming from an earlier one) the two are swapped atomically (RENAME_EXCHANGE),
// so dst is always a complete checkpoint, and the old one is deleted in the background.
Status install(const std::filesystem::path& tmp, const std::filesystem::path& dst);
// Every step-N directory of root, N ascending.
std::vector<std::int64_t> saved_steps(const std::filesystem::path& root);
// Removes the oldest complete checkpoints until `keep` remain, never the one latest
// names: renamed away at once, deleted in the background (Note [checkpoint pruning]).
void prune(const std::filesystem::path& root, int keep);

}  // namespace strata::ckpt
