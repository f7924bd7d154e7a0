#include "strata/engine/chunk_store.h"

#include <algorithm>
#include <unordered_set>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/native/Resize.h>
#include <c10/core/StorageImpl.h>

namespace strata::engine {

Result<kernels::DType> kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kernels::DType::kF32;
    case at::kBFloat16: return kernels::DType::kBF16;
    case at::kHalf: return kernels::DType::kF16;
    default:
      return make_error(ErrorCode::kInvalidArgument, "dtype {} is not supported (use float32, bfloat16 or float16)",
                        c10::toString(t));
  }
}

Status ChunkStoreOptions::validate() const {
  if (world < 1 || rank < 0 || rank >= world) {
    return make_error(ErrorCode::kInvalidArgument, "rank {} of world {} is not valid", rank, world);
  }
  STRATA_RETURN_IF_ERROR(kernel_dtype(compute_dtype));
  if (packing.io_align_bytes == 0) return make_error(ErrorCode::kInvalidArgument, "io_align_bytes must be >= 1");
  return ok();
}

Result<std::unique_ptr<ChunkStore>> ChunkStore::create(std::vector<at::Tensor> params, const ChunkStoreOptions& opt,
                                                       std::span<const plan::ParamAccess> uses, const InitHook& on_init,
                                                       const ChunkHook& on_chunk) {
  STRATA_ASSIGN_OR_RETURN(auto store, plan(std::move(params), opt, uses));
  STRATA_RETURN_IF_ERROR(store->fill(on_init, on_chunk));
  return store;
}

Result<std::unique_ptr<ChunkStore>> ChunkStore::plan(std::vector<at::Tensor> params, const ChunkStoreOptions& opt,
                                                     std::span<const plan::ParamAccess> uses) {
  STRATA_RETURN_IF_ERROR(opt.validate());
  std::vector<plan::ParamInfo> infos;
  std::unordered_set<const void*> seen;
  for (std::size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    if (!p.defined() || p.is_sparse() || !p.is_contiguous()) {
      return make_error(ErrorCode::kInvalidArgument, "parameter {} must be a defined, dense, contiguous tensor", i);
    }
    if (!seen.insert(p.unsafeGetTensorImpl()).second) {
      return make_error(ErrorCode::kInvalidArgument, "parameter {} is listed twice (pass shared parameters once)", i);
    }
    infos.push_back({static_cast<std::uint64_t>(p.numel()), p.requires_grad()});
  }
  const std::uint64_t elem_bytes = c10::elementSize(opt.compute_dtype);
  plan::ChunkingOptions co;
  co.world = opt.world;
  // The master and states are fp32, so align shards for fp32 I/O (the strictest case).
  const ChunkOptions& pk = opt.packing;
  co.io_align_elems = std::max<std::uint64_t>(1, pk.io_align_bytes / std::max<std::uint64_t>(elem_bytes, 4));
  co.chunk_size_elems = pk.chunk_size_elems;
  co.search_range_elems = pk.search_range_elems;
  co.max_chunk_elems = pk.max_chunk_elems;
  // Coarsen the search step rather than fail the planner's cost guard: a small hidden
  // size (the usual step) with the default search range would trip it.
  const std::uint64_t range =
      pk.max_chunk_elems > 0 ? std::min(pk.search_range_elems, pk.max_chunk_elems) : pk.search_range_elems;
  co.search_step_elems = std::max<std::uint64_t>(
      {1, pk.search_step_elems, (range + co.max_candidates - 2) / (co.max_candidates - 1)});
  co.persistence_threshold_elems = opt.persistence_threshold_elems;
  co.private_min_gap = pk.private_min_gap;
  STRATA_ASSIGN_OR_RETURN(plan::ChunkLayout layout, plan::pack_chunks(infos, uses, co));

  std::unique_ptr<ChunkStore> store(new ChunkStore());
  store->options_ = opt;
  store->layout_ = std::move(layout);
  store->params_ = std::move(params);
  return store;
}

Status ChunkStore::fill(const InitHook& on_init, const ChunkHook& on_chunk, const ValueSource& values) {
  TORCH_INTERNAL_ASSERT(full_.empty(), "ChunkStore::fill runs once");
  at::NoGradGuard no_grad;
  // One chunk at a time (Note [gathered storage]): allocate, copy each value in, rebind
  // the parameter to its view, then let the caller shard and free the chunk.
  const auto opts = at::TensorOptions().device(options_.device);
  for (std::size_t c = 0; c < num_chunks(); ++c) {
    full_.push_back(at::zeros({chunk_elems(c)}, opts.dtype(options_.compute_dtype)));
    at::Tensor g = at::empty({chunk_elems(c)}, opts.dtype(options_.compute_dtype));
    free_storage(g);
    grad_.push_back(g);
    for (const plan::ParamSlot& slot : layout_.chunks[c].params) {
      at::Tensor& p = params_[slot.param];
      at::Tensor value = p.detach();
      if (p.numel() > 0 && !has_storage(p)) {  // deferred: made now, at full precision
        if (!values) {
          return make_error(ErrorCode::kInvalidArgument,
                            "parameter {} is deferred (it has no values) and no initializer was given", slot.param);
        }
        value = at::empty(p.sizes(), at::kFloat);  // the initializer fills it on the CPU
        values(slot.param, value);
      }
      at::Tensor view = param_view(full_[c], slot.param);
      if (on_init) on_init(*this, slot.param, value);
      view.copy_(value);
      p.set_data(view);
    }
    if (on_chunk) STRATA_RETURN_IF_ERROR(on_chunk(*this, c));
  }
  bind_grads();
  return ok();
}

at::Tensor ChunkStore::shard(const at::Tensor& full_chunk, std::size_t c) const {
  const std::int64_t n = shard_elems(c);
  return full_chunk.narrow(0, options_.rank * n, n);
}

at::Tensor ChunkStore::param_view(const at::Tensor& chunk_tensor, std::size_t i) const {
  const plan::ParamLocation& loc = layout_.where[i];
  return chunk_tensor.narrow(0, static_cast<std::int64_t>(loc.offset_elems), static_cast<std::int64_t>(loc.numel))
      .view(params_[i].sizes());
}

void ChunkStore::free_storage(const at::Tensor& t) {
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  s->reset();  // drops the bytes; the StorageImpl, and every view of it, lives on
}

void ChunkStore::alloc_storage(const at::Tensor& t) {
  const std::size_t bytes = static_cast<std::size_t>(t.numel()) * t.element_size();
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  if (s->nbytes() == bytes) return;
  if (t.is_cpu()) {
    at::native::resize_bytes_cpu(s, bytes);
    return;
  }
  // Nothing to keep: the storage is empty (free_storage) or about to be overwritten.
  s->set_data_ptr_noswap(s->allocator()->allocate(bytes));
  s->set_nbytes(bytes);
}

bool ChunkStore::has_storage(const at::Tensor& t) { return t.storage().nbytes() != 0; }

void ChunkStore::bind_grads() {
  // A view can only be made of a storage that has its bytes: give freed gradient
  // buffers theirs back while binding, then free them again.
  std::vector<bool> was_free(grad_.size());
  for (std::size_t c = 0; c < grad_.size(); ++c) {
    was_free[c] = !has_storage(grad_[c]);
    if (was_free[c]) alloc_storage(grad_[c]);
  }
  for (std::size_t i = 0; i < params_.size(); ++i) {
    if (params_[i].requires_grad()) params_[i].mutable_grad() = param_view(grad_[layout_.where[i].chunk], i);
  }
  for (std::size_t c = 0; c < grad_.size(); ++c)
    if (was_free[c]) free_storage(grad_[c]);
}

std::vector<ChunkStore::ShardSlot> ChunkStore::shard_slots(std::size_t c, int rank) const {
  const std::int64_t n = shard_elems(c), lo = rank * n, hi = lo + n;
  std::vector<ShardSlot> out;
  for (const plan::ParamSlot& s : layout_.chunks[c].params) {
    const std::int64_t a = std::max<std::int64_t>(lo, static_cast<std::int64_t>(s.offset_elems));
    const std::int64_t b = std::min<std::int64_t>(hi, static_cast<std::int64_t>(s.offset_elems + s.numel));
    if (a < b) out.push_back({s.param, a - lo, a - static_cast<std::int64_t>(s.offset_elems), b - a});
  }
  return out;
}

}  // namespace strata::engine
