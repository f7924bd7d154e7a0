// ChunkStore: a model's trainable parameters packed into flat chunks.
//
//   ChunkStoreOptions opt{.world = comm.world(), .rank = comm.rank(), .compute_dtype = at::kBFloat16};
//   STRATA_ASSIGN_OR_RETURN(auto store, ChunkStore::create(params, opt));   // distinct tensors
//   // every parameter is now a view of store->full(c); its .grad a view of store->grad(c)
//   at::Tensor mine = store->shard(store->full(c), c);  // this rank's slice of chunk c
//
// create() is plan() (the layout, from shapes alone) then fill() (the values, one chunk
// at a time). The engine decides every chunk's tier between the two, so fill() can move
// each chunk to its tier as soon as it is packed (Note [streaming setup] in engine.cpp).
//
// The layout comes from the planner (plan::pack_chunks): parameters in first-use order
// (registration order without a trace), chunk sizes a multiple of lcm(world, I/O
// alignment), so every chunk splits into `world` equal shards. Rank r owns elements
// [r * shard_elems, (r+1) * shard_elems) of every chunk.
//
// Note [gathered storage]: each parameter is rebound (Tensor::set_data) to a view of its
// chunk's full-size tensor, and its gradient to a view of the chunk's gradient tensor.
// Freeing a chunk frees the bytes of that storage (size 0) but keeps the storage object,
// and re-materializing resizes it back. Views, and the tensors autograd saved for
// backward, point at the storage object, so they stay valid across a release and a
// re-gather. This is what lets ZeRO-3 release parameters after forward and re-gather
// them before backward. Stages 0-2 keep every chunk materialized.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include <ATen/core/Tensor.h>

#include "strata/base/status.h"
#include "strata/kernels/dtype.h"
#include "strata/plan/chunking.h"

namespace strata::engine {

// How parameters pack into chunks: the knobs a user sets (EngineOptions::chunks).
struct ChunkOptions {
  std::uint64_t chunk_size_elems = 0;         // 0 = search for the least waste
  std::uint64_t search_range_elems = 64ull << 20;
  std::uint64_t search_step_elems = 1024;     // the model's hidden size works best
  std::uint64_t max_chunk_elems = 0;          // bound on searched sizes; 0 = the engine's cap
  std::uint64_t io_align_bytes = 4096;        // shards stay O_DIRECT-aligned when offloaded
  std::uint32_t private_min_gap = 0;
};

struct ChunkStoreOptions {
  int world = 1;
  int rank = 0;
  at::ScalarType compute_dtype = at::kFloat;  // dtype of the parameters the model computes with
  c10::Device device{c10::kCPU};  // where the full chunks and gradient buffers live (compute)
  ChunkOptions packing;
  // Parameters smaller than this pack into persistent chunks. The engine takes it from
  // its schedule options (stage 3), the one place it is set.
  std::uint64_t persistence_threshold_elems = 0;

  Status validate() const;
};

class ChunkStore {
 public:
  // Called once per parameter with its original value, before it is cast and rebound:
  // the place to copy full-precision values into fp32 master shards.
  using InitHook = std::function<void(const ChunkStore& store, std::size_t param, const at::Tensor& original)>;
  // Called once per chunk right after its parameters were copied in and rebound: the
  // place to take this rank's shard and free the full chunk, so that building the store
  // never holds more than one extra chunk.
  using ChunkHook = std::function<Status(const ChunkStore& store, std::size_t chunk)>;
  // The values of a deferred parameter (one without bytes; deferred_init.h): fills
  // `out`, an fp32 tensor of the parameter's shape.
  using ValueSource = std::function<void(std::size_t param, at::Tensor& out)>;

  // Packs `params` (trainable, registration order) and rebinds each as a view of its
  // chunk; values are copied in (cast to compute_dtype). `uses` is the recorded access
  // trace, when there is one. Parameters must be distinct, dense and contiguous.
  static Result<std::unique_ptr<ChunkStore>> create(std::vector<at::Tensor> params, const ChunkStoreOptions& options,
                                                    std::span<const plan::ParamAccess> uses = {},
                                                    const InitHook& on_init = {}, const ChunkHook& on_chunk = {});
  // The layout alone: parameters may be deferred; nothing is copied or rebound yet.
  static Result<std::unique_ptr<ChunkStore>> plan(std::vector<at::Tensor> params, const ChunkStoreOptions& options,
                                                  std::span<const plan::ParamAccess> uses = {});
  // Once, after plan(): chunk by chunk, the values copied in (a deferred parameter's
  // from `values`, which it then needs) and the parameters rebound, then on_chunk.
  Status fill(const InitHook& on_init, const ChunkHook& on_chunk, const ValueSource& values = {});

  const ChunkStoreOptions& options() const { return options_; }
  const plan::ChunkLayout& layout() const { return layout_; }
  std::size_t num_chunks() const { return layout_.chunks.size(); }
  const plan::Chunk& chunk(std::size_t c) const { return layout_.chunks[c]; }
  std::int64_t chunk_elems(std::size_t c) const { return static_cast<std::int64_t>(layout_.chunks[c].size_elems); }
  std::int64_t shard_elems(std::size_t c) const { return chunk_elems(c) / options_.world; }
  const std::vector<at::Tensor>& params() const { return params_; }

  // Full-size chunk tensors in compute dtype (Note [gathered storage]).
  const at::Tensor& full(std::size_t c) const { return full_[c]; }
  const at::Tensor& grad(std::size_t c) const { return grad_[c]; }
  // This rank's slice of a full-size chunk tensor (any tensor of chunk c's size).
  at::Tensor shard(const at::Tensor& full_chunk, std::size_t c) const;

  // Frees / re-allocates the bytes behind a full-size tensor, keeping its storage object
  // (on any device: a CUDA storage gets them from the caching allocator).
  static void free_storage(const at::Tensor& t);
  static void alloc_storage(const at::Tensor& t);
  static bool has_storage(const at::Tensor& t);

  // Sets every trainable parameter's .grad to its view of grad(c). Gradient buffers
  // start without bytes; their owner allocates them (alloc_storage) when needed.
  void bind_grads();

  // Parameter i's view into a tensor laid out like chunk(layout.where[i].chunk).
  at::Tensor param_view(const at::Tensor& chunk_tensor, std::size_t param) const;
  // The part of [shard start, shard end) of chunk c that each parameter covers:
  // (param index, offset within the shard, offset within the parameter, numel).
  struct ShardSlot {
    std::uint32_t param;
    std::int64_t shard_offset;
    std::int64_t param_offset;
    std::int64_t numel;
  };
  std::vector<ShardSlot> shard_slots(std::size_t c, int rank) const;

 private:
  ChunkStore() = default;

  ChunkStoreOptions options_;
  plan::ChunkLayout layout_;
  std::vector<at::Tensor> params_;
  std::vector<at::Tensor> full_;
  std::vector<at::Tensor> grad_;
};

// at dtype -> the kernels' dtype; errors for anything but fp32/bf16/fp16.
Result<kernels::DType> kernel_dtype(at::ScalarType t);

}  // namespace strata::engine
