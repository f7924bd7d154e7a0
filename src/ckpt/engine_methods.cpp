// Engine::save_checkpoint and Engine::load_checkpoint: the engine's own entry points to
// this layer, defined here so the engine layer stays below the checkpoint format.
#include "strata/ckpt/checkpoint.h"

namespace strata::engine {

Result<std::filesystem::path> Engine::save_checkpoint(const std::filesystem::path& root, std::int64_t step) {
  return ckpt::save_checkpoint(*this, {.root = root, .step = step});
}

Result<std::int64_t> Engine::load_checkpoint(const std::filesystem::path& path) {
  STRATA_ASSIGN_OR_RETURN(ckpt::Loaded l, ckpt::load_checkpoint(*this, path));
  return l.meta.step;
}

}  // namespace strata::engine
