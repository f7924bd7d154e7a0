#include "chunk_runtime.h"

#include <algorithm>

#include <ATen/ATen.h>
#include <fmt/format.h>

namespace strata::engine {

io::SwapKey param_key(std::uint32_t c) { return {io::SwapKind::kParams, 0, c}; }
// Tensor ids: 256 per sub-group; the gradient is id 255 of its sub-group.
io::SwapKey optim_key(std::uint32_t c, std::uint32_t t, std::uint32_t g) {
  return {io::SwapKind::kOptimizer, g * 256 + t, c};
}
io::SwapKey grad_key(std::uint32_t c, std::uint32_t g) { return {io::SwapKind::kOptimizer, g * 256 + 255, c}; }

ChunkRuntime::ChunkRuntime(std::unique_ptr<ChunkStore> store, bool replicated, std::uint64_t optim_bytes_per_elem,
                           std::uint64_t grad_bytes_per_elem, const plan::ScheduleOptions& sched,
                           tiers::TierAllocator& tiers, StorageCache& storage,
                           const std::unique_ptr<io::SwapStore>& swap)
    : store_(std::move(store)),
      replicated_(replicated),
      optim_bytes_per_elem_(optim_bytes_per_elem),
      grad_bytes_per_elem_(grad_bytes_per_elem),
      sched_(sched),
      tiers_(tiers),
      storage_(storage),
      swap_(swap) {
  const int rank = store_->options().rank;
  rt_.resize(store_->num_chunks());
  for (std::uint32_t c = 0; c < size(); ++c) {
    slots_.push_back(store_->shard_slots(c, rank));
    for (const plan::ParamSlot& s : store_->chunk(c).params)
      if (store_->params()[s.param].requires_grad()) rt_[c].trainable = true;
  }
}

std::string ChunkRuntime::name(std::uint32_t c) const { return fmt::format("chunk {}", c); }

std::uint64_t ChunkRuntime::full_bytes(std::uint32_t c) const {
  return static_cast<std::uint64_t>(store_->chunk_elems(c)) * c10::elementSize(store_->options().compute_dtype);
}

std::uint64_t ChunkRuntime::shard_bytes(std::uint32_t c) const {
  return static_cast<std::uint64_t>(store_->shard_elems(c)) * c10::elementSize(store_->options().compute_dtype);
}

plan::ScheduleChunk ChunkRuntime::schedule_chunk(std::uint32_t c) const {
  const ChunkRt& k = rt_[c];
  const std::uint64_t numel = store_->chunk(c).size_elems;
  const bool flagged_persistent = store_->chunk(c).kind == plan::ChunkKind::kPersistent;
  const std::uint64_t shard_elems = static_cast<std::uint64_t>(store_->shard_elems(c));
  return plan::ScheduleChunk{
      .bytes = full_bytes(c),
      .numel = numel,
      .grad_bytes = k.trainable ? full_bytes(c) : 0,
      .shard_tier = k.shard_tier,
      .optim_tier = k.optim_tier,
      .optim_state_bytes = k.trainable ? shard_elems * optim_bytes_per_elem_ : 0,
      .grad_shard_bytes = k.trainable && !k.grads_on_nvme ? shard_elems * grad_bytes_per_elem_ : 0,
      .grad_shard_on_compute = k.grads_on_compute,
      .persistent = flagged_persistent,
      .shard_from_master = k.shard_from_master,
      .replicated = replicated_,
  };
}

Result<tiers::Reservation> ChunkRuntime::reserve(Tier t, std::uint64_t bytes, StateKind kind, std::uint32_t c,
                                                 std::string_view what) {
  return tiers_.reserve(t, bytes, kind, fmt::format("{} {}", what, name(c)));
}

// The swap store reads and writes host memory: a tensor on the compute device (a gather's
// slice of a GPU chunk) goes through the bounce tensor too.
Status ChunkRuntime::load_shard(std::uint32_t c, const at::Tensor& dst) {
  if (dst.is_cpu() && io_aligned(dst)) return swap_->get(param_key(c), bytes_of(dst));
  at::Tensor bounce = aligned_empty(dst.numel(), dst.scalar_type(), host_memory_for(dst.device()));
  STRATA_RETURN_IF_ERROR(swap_->get(param_key(c), bytes_of(bounce)));
  dst.copy_(bounce);
  return ok();
}

Status ChunkRuntime::store_shard(std::uint32_t c, const at::Tensor& src) {
  if (src.is_cpu() && io_aligned(src)) return swap_->put(param_key(c), bytes_of(src));
  at::Tensor bounce = aligned_empty(src.numel(), src.scalar_type(), host_memory_for(src.device()));
  bounce.copy_(src);
  return swap_->put(param_key(c), bytes_of(bounce));
}

std::int64_t ChunkRuntime::largest_shard_elems(const std::function<bool(const ChunkRt&)>& which) const {
  std::int64_t largest = 0;
  for (std::uint32_t c = 0; c < size(); ++c)
    if (which(rt_[c])) largest = std::max(largest, store_->shard_elems(c));
  return largest;
}

void ChunkRuntime::alloc_full(std::uint32_t c) { storage_.alloc(store_->full(c)); }
void ChunkRuntime::free_full(std::uint32_t c) { storage_.free(store_->full(c)); }

std::vector<plan::ScheduleChunk> ChunkRuntime::schedule_chunks() const {
  std::vector<plan::ScheduleChunk> out;
  for (std::uint32_t c = 0; c < size(); ++c) out.push_back(schedule_chunk(c));
  return out;
}

void ChunkRuntime::decide_residency(std::uint32_t c) {
  const plan::ScheduleChunk sc = schedule_chunk(c);
  rt_[c].residency = replicated_                             ? Residency::kReplicated
                     : plan::chunk_aliased(sc, sched_.world) ? Residency::kAliased
                     : plan::chunk_persistent(sc, sched_)    ? Residency::kPersistent
                                                             : Residency::kSharded;
}

Status ChunkRuntime::materialize(std::uint32_t c) {
  ChunkRt& k = rt_[c];
  switch (k.residency) {
    case Residency::kReplicated: {
      // The whole chunk is what this rank holds; its slice is the shard the step updates.
      k.shard = store_->shard(store_->full(c), c);
      k.sm.to(ChunkState::kHold);
      STRATA_ASSIGN_OR_RETURN(k.shard_res, reserve(Tier::kCompute, full_bytes(c), StateKind::kParams, c, "params"));
      return ok();
    }
    case Residency::kAliased:
      // World 1 on compute: the full chunk is the shard; it stays gathered for good.
      alloc_full(c);
      store_->full(c).copy_(k.shard);
      k.shard = store_->full(c);
      k.sm.to(ChunkState::kHold);
      break;
    case Residency::kSharded:
    case Residency::kPersistent:
      if (k.shard_from_master) {  // Note [shard from master]: the master holds the values
        k.shard = at::Tensor();
        return ok();
      }
      if (k.shard_tier == Tier::kNvme) {
        STRATA_RETURN_IF_ERROR(store_shard(c, k.shard));
        k.shard = at::Tensor();  // the swap store holds it now
      }
      break;
  }
  STRATA_ASSIGN_OR_RETURN(k.shard_res, reserve(k.shard_tier, shard_bytes(c), StateKind::kParams, c, "param shard"));
  return ok();
}

Status ChunkRuntime::move_shard_to_host(std::uint32_t c) {
  ChunkRt& k = rt_[c];
  if (!k.shard_res) {  // not materialized yet: only the decision changes
    k.shard_tier = Tier::kHost;
    return ok();
  }
  STRATA_ASSIGN_OR_RETURN(tiers::Reservation r, reserve(Tier::kHost, shard_bytes(c), StateKind::kParams, c, "param shard"));
  k.shard = k.shard.clone();  // a real copy into the host pool
  if (k.residency == Residency::kAliased) {  // it was the full chunk: free it
    k.sm.to(ChunkState::kFree);
    free_full(c);
  }
  k.shard_res = std::move(r);
  k.shard_tier = Tier::kHost;
  decide_residency(c);
  return ok();
}

}  // namespace strata::engine
