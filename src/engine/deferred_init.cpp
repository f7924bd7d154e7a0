#include "strata/engine/deferred_init.h"

#include <torch/nn/module.h>

#include "strata/engine/chunk_store.h"

namespace strata::engine {

std::uint64_t defer_parameters(torch::nn::Module& module) {
  std::uint64_t freed = 0;
  for (const at::Tensor& p : module.parameters(/*recurse=*/true)) {
    if (is_deferred(p) || p.numel() == 0) continue;
    freed += p.storage().nbytes();
    ChunkStore::free_storage(p);
  }
  return freed;
}

bool is_deferred(const at::Tensor& param) { return param.numel() > 0 && !ChunkStore::has_storage(param); }

}  // namespace strata::engine
