// Chunk packing: lay parameters out, in first-use order, into chunks.
//
//   std::vector<plan::ParamInfo> params = ...;          // registration order
//   std::vector<plan::ParamAccess> uses = ...;          // from the trace; may be empty
//   plan::ChunkingOptions opt{.world = 4, .io_align_elems = 2048, .search_step_elems = 768};
//   STRATA_ASSIGN_OR_RETURN(plan::ChunkLayout layout, plan::pack_chunks(params, uses, opt));
//   for (const plan::Chunk& c : layout.chunks)
//     for (const plan::ParamSlot& s : c.params)
//       view(param[s.param], chunk_storage(c), s.offset_elems, s.numel);
//   // rank r owns elements [r * c.shard_elems(world), (r+1) * c.shard_elems(world)) of c
//
// Rules (DESIGN.md §3 "Chunk"):
//  - Order: by first use in `uses` (access index, then position within the access);
//    parameters never used keep registration order after the used ones. With no trace
//    at all this is registration order.
//  - Capacity: every chunk's size is a multiple of align = lcm(world, io_align_elems), so
//    it splits into `world` equal shards.
//  - Shared chunks all have the same capacity C (given, or searched: see below). They
//    fill sequentially; a parameter that does not fit in the open chunk's remaining
//    space closes it and opens the next. A parameter larger than C gets a chunk of its
//    own, sized align_up(numel) (kind kOversized); the open chunk stays open.
//  - Search (Gemini's): candidates are C = m, m + step, ..., m + range, where m is the
//    largest parameter after dropping parameters above mean + 3 sigma (they become
//    oversized chunks). Each candidate is aligned up and scored by the padding the packing
//    above would leave (tail waste, including oversized chunks' alignment); the least
//    waste wins, the smaller C on ties. With max_chunk_elems set, candidates above it
//    (before alignment) are dropped, m itself always stays: a budgeted compute tier
//    bounds the chunk size.
//  - Private chunks (Elixir's fused chunks): a parameter whose consecutive uses within
//    one phase are at least `private_min_gap` accesses apart (a tied embedding used at
//    the start and the end of forward) gets its own chunk, so that keeping it gathered
//    between those uses does not keep unrelated parameters gathered too.
//  - Persistent chunks: parameters with numel < persistence_threshold_elems are packed
//    together, first, into chunks of capacity <= C, the last one shrunk to fit; the
//    schedule keeps them gathered (DeepSpeed's stage3_param_persistence_threshold).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "strata/base/config.h"
#include "strata/base/status.h"
#include "strata/plan/partition.h"
#include "strata/plan/trace.h"

namespace strata::plan {

// The parameters one traced access uses (the module's own parameters), in module order.
struct ParamAccess {
  std::vector<std::uint32_t> params;
  Phase phase = Phase::kForward;
};

struct ChunkingOptions {
  int world = 1;
  std::uint64_t io_align_elems = 1;     // I/O alignment in elements (bytes / element size)
  std::uint64_t chunk_size_elems = 0;   // 0 = search
  std::uint64_t search_range_elems = 64ull << 20;
  std::uint64_t search_step_elems = 1024;  // the model's hidden size, as in Gemini
  std::uint64_t max_chunk_elems = 0;       // 0 = no bound on searched candidates
  bool filter_outliers = true;             // drop params above mean + 3 sigma before searching
  std::uint64_t persistence_threshold_elems = 0;  // 0 = no persistent chunks
  std::uint32_t private_min_gap = 0;              // 0 = no private chunks
  // Guards the search's cost: range / step + 1 candidates, each O(params).
  std::uint64_t max_candidates = 1u << 20;

  Status validate() const;
  // From strata.chunk_size, strata.chunk_search_range and DeepSpeed's
  // stage3_param_persistence_threshold (persistent chunks at stage 3 only); the caller
  // knows the world, the I/O alignment in elements and the model's hidden size.
  static Result<ChunkingOptions> from_config(const Config& cfg, int world, std::uint64_t io_align_elems,
                                             std::uint64_t hidden_elems);
};

struct ParamSlot {
  std::uint32_t param = 0;
  std::uint64_t offset_elems = 0;
  std::uint64_t numel = 0;
};

enum class ChunkKind : std::uint8_t { kShared, kOversized, kPrivate, kPersistent };
std::string_view to_string(ChunkKind k);

struct Chunk {
  ChunkKind kind = ChunkKind::kShared;
  std::vector<ParamSlot> params;   // in layout order; offsets increase, no overlap
  std::uint64_t size_elems = 0;    // capacity, a multiple of the alignment
  std::uint64_t used_elems = 0;    // sum of params' numel
  std::uint64_t padding_elems() const { return size_elems - used_elems; }
  std::uint64_t shard_elems(int world) const { return size_elems / static_cast<std::uint64_t>(world); }
};

struct ParamLocation {
  std::uint32_t chunk = 0;
  std::uint64_t offset_elems = 0;
  std::uint64_t numel = 0;
};

struct ChunkLayout {
  std::vector<Chunk> chunks;
  std::vector<ParamLocation> where;   // per parameter (registration index)
  std::vector<std::uint32_t> order;   // parameters in first-use order
  std::uint64_t chunk_size_elems = 0; // C
  std::uint64_t align_elems = 1;      // lcm(world, io_align_elems)
  std::uint64_t used_elems = 0;
  std::uint64_t capacity_elems = 0;
  std::uint64_t padding_elems = 0;
  double waste_ratio = 0.0;           // padding / capacity
  std::uint64_t n_candidates = 0;     // chunk sizes scored by the search (0 if given)
};

Result<ChunkLayout> pack_chunks(std::span<const ParamInfo> params, std::span<const ParamAccess> uses,
                                const ChunkingOptions& opt);

// Note [chunk granularity]: the largest chunk size a search may pick (elements, >= 1).
// Chunks are the unit of gathering, gradient reduction and I/O, so one chunk holding
// most of the model leaves nothing to overlap: a 51M-element model packed into a single
// chunk is gathered all at once and its gradients reduced only at the end. The cap is
// the least of
//   - model_elems / kMinChunksPerModel, so that work on one chunk overlaps moving the next;
//   - a quarter of the compute budget: the chunk in use, its gradient buffer and a
//     prefetched successor must fit together;
//   - stage 3: the prefetch bucket, or no chunk could be prefetched;
//   - stages 2-3: the reduce bucket, the gradient bytes in flight.
// The search keeps its smallest candidate (the largest parameter) even above the cap.
inline constexpr std::uint64_t kMinChunksPerModel = 8;
struct ChunkCapInput {
  std::uint64_t model_elems = 0;
  int stage = 0;
  std::uint64_t elem_bytes = 4;            // compute dtype
  std::uint64_t compute_budget_bytes = 0;  // 0 = none
  std::uint64_t prefetch_bucket_bytes = 0; // 0 = no prefetch (no bound from it)
  std::uint64_t reduce_bucket_elems = 0;   // 0 = no bound
};
std::uint64_t chunk_size_cap(const ChunkCapInput& in);

// First-use order (see the rules above).
std::vector<std::uint32_t> first_use_order(std::size_t n_params, std::span<const ParamAccess> uses);

// Padding left by packing `sizes` (in order) into shared chunks of capacity
// `capacity_elems` (already aligned), oversized params getting align_up(numel) chunks.
std::uint64_t packing_waste(std::span<const std::uint64_t> sizes, std::uint64_t capacity_elems,
                            std::uint64_t align_elems);

struct ChunkSearch {
  std::uint64_t chunk_size_elems = 0;  // aligned
  std::uint64_t waste_elems = 0;
  std::uint64_t n_candidates = 0;
};
// Gemini's search over `sizes` (in packing order); see the rules above.
Result<ChunkSearch> search_chunk_size(std::span<const std::uint64_t> sizes, const ChunkingOptions& opt);

// The chunks that hold any of `params` (zero-size ones need no chunk), sorted and
// unique: a module's chunk set.
std::vector<std::uint32_t> chunks_of(const ChunkLayout& layout, std::span<const std::uint32_t> params);

}  // namespace strata::plan
