// Engine: what the caller changed of its parameters between steps: their values in place
// (Note [edited parameters]) and their requires_grad (Note [unfreezing]).
#include <ATen/ATen.h>

#include "engine_impl.h"

namespace strata::engine {

// Note [edited parameters]: the engine steps an fp32 master of every trained parameter
// and writes the result back into the parameter. A caller may change a trained parameter
// in place between steps: model.load_state_dict(...) after the engine was built, weight
// clipping (WGAN) or re-initialization under torch.no_grad(). Plain PyTorch steps from
// the changed values, so the engine takes the change into its master before anything
// reads the master: at step(), and before consolidation and a save. The engine does not
// write parameters through their own tensors (it writes the chunk buffers they view), so
// a parameter's version counter moves only with such an edit.
//
// Stages 0-2 (replicated chunks), and stage 3 at one rank with the parameters on the
// compute tier (aliased chunks): the parameter holds its whole value, and each rank takes
// the edited elements of its own master shard. The step then writes and all-gathers the
// shards as always, so no collective is added; ranks that make the same edit (as
// data-parallel scripts do, and as DDP needs) agree. With a bf16 (or fp16) compute dtype
// only the elements whose value is no longer the master's rounding take the new value:
// the others keep their fp32 masters, so clipping a few elements does not round the
// rest. A wrapped torch::optim optimizer steps views of the same masters. Otherwise at
// stage 3 a parameter holds values only while its chunk is gathered: an edit then is
// taken as Note [edits while gathered] says; one seen later (the Python front end
// refuses an edit of a released parameter itself) is refused by name.
//
// Note [edits while gathered]: at stage 3 a forward may change a gathered parameter in
// place (nn.Embedding(max_norm=...) renormalizes the rows it looks up). Plain PyTorch
// keeps the change; freeing the gathered chunk would lose it, and every later gather
// would read the old shard. So when a chunk whose parameter's version moved is released
// (or is still gathered at step(), a persistent one), each rank takes the change from
// its own slice of the gathered chunk: into its master (only the changed elements, as
// above), and the slice into its shard (host, compute or nvme; none when the shard is
// the master's cast), so the backward's gather and the next step see it. No collective:
// ranks that make the same change (the same rows looked up) agree, as DDP needs, and
// where they differ each slice keeps its own rank's, as at stages 0-2.
void take_values(const at::Tensor& master, const at::Tensor& value) {
  const at::Tensor v = value.to(at::kCPU).reshape({-1});
  if (v.scalar_type() == at::kFloat) {
    master.copy_(v);
    return;
  }
  master.copy_(at::where(v.ne(master.to(v.scalar_type())), v.to(at::kFloat), master));
}

Result<std::size_t> Engine::Impl::param_index(const at::Tensor& p) const {
  for (std::size_t i = 0; i < all_params.size(); ++i)
    if (all_params[i].is_same(p)) return i;
  return make_error(ErrorCode::kInvalidArgument, "a tensor of shape {} is not a parameter of this engine",
                    c10::str(p.sizes()));
}

void Engine::Impl::index_chunk_params() {
  const ChunkStore& store = core.chunks->store();
  chunk_params.assign(core.chunks->size(), {});
  for (std::size_t i = 0; i < all_params.size(); ++i)
    if (store_index[i] >= 0)
      chunk_params[store.layout().where[static_cast<std::size_t>(store_index[i])].chunk].push_back(i);
}

bool Engine::Impl::edited_in(std::uint32_t c) const {
  if (c >= chunk_params.size()) return false;  // setup: nothing has run
  for (std::size_t i : chunk_params[c])
    if (all_params[i]._version() != param_versions[i]) return true;
  return false;
}

Status Engine::Impl::take_into_master(std::uint32_t c, const at::Tensor& slice, const std::vector<std::uint8_t>& edited) {
  ChunkRuntime& chunks = *core.chunks;
  // A chunk without optimizer state holds its values in the shard alone.
  if (!chunks[c].trainable || chunks.slots(c).empty()) return ok();
  pending_read.reset();  // a save's read begun before the edit holds the old master
  STRATA_ASSIGN_OR_RETURN(ShardState s, optim->read(c));
  for (const ChunkStore::ShardSlot& slot : chunks.slots(c))
    if (edited[slot.param])
      take_values(s.master.narrow(0, slot.shard_offset, slot.numel), slice.narrow(0, slot.shard_offset, slot.numel));
  return optim->write(c, s);
}

Status Engine::Impl::take_gathered_edits(std::uint32_t c, const at::Tensor& slice) {
  ChunkRuntime& chunks = *core.chunks;
  ChunkRt& k = chunks[c];
  std::vector<std::uint8_t> edited(chunks.store().params().size(), 0);
  for (std::size_t i : chunk_params[c]) {
    if (all_params[i]._version() == param_versions[i]) continue;
    edited[static_cast<std::size_t>(store_index[i])] = 1;
    param_versions[i] = all_params[i]._version();
  }
  STRATA_RETURN_IF_ERROR(take_into_master(c, slice, edited));
  if (k.shard_from_master) return ok();  // the next gather casts the master
  if (k.shard_tier == Tier::kNvme) return chunks.store_shard(c, slice);
  k.shard.copy_(slice);
  return ok();
}

void Engine::Impl::record_param_versions() {
  param_versions.resize(all_params.size());
  for (std::size_t i = 0; i < all_params.size(); ++i) param_versions[i] = all_params[i]._version();
}

Status Engine::Impl::adopt_param_edits() {
  ChunkRuntime& chunks = *core.chunks;
  const ChunkStore& store = chunks.store();
  std::vector<std::uint8_t> edited(store.params().size(), 0);
  std::vector<std::uint8_t> chunk_edited(chunks.size(), 0);
  bool any = false;
  for (std::size_t i = 0; i < all_params.size(); ++i) {
    if (store_index[i] < 0 || all_params[i]._version() == param_versions[i]) continue;
    const auto p = static_cast<std::size_t>(store_index[i]);
    const std::uint32_t c = store.layout().where[p].chunk;
    if (!chunks[c].always_gathered()) {
      if (chunks[c].sm.gathered()) {  // Note [edits while gathered]
        STRATA_RETURN_IF_ERROR(gatherer->take_edits(c));
        continue;
      }
      return make_error(ErrorCode::kUnimplemented,
                        "parameter '{}' was changed in place since the engine last wrote it: its values live in the "
                        "engine's stage-3 shards, which would overwrite the change. Load weights before building "
                        "the engine, or with its load_checkpoint", param_names[i]);
    }
    edited[p] = chunk_edited[c] = 1;
    any = true;
  }
  if (!any) return ok();
  // The shard of an always-gathered chunk is its slice of the whole chunk this rank
  // holds, edited already: the parameters' values.
  for (std::uint32_t c = 0; c < chunks.size(); ++c)
    if (chunk_edited[c]) STRATA_RETURN_IF_ERROR(take_into_master(c, chunks[c].shard, edited));
  record_param_versions();
  return ok();
}

// Note [unfreezing]: the engine keeps gradient buffers and optimizer state only for the
// parameters that were trainable when it was built (a frozen base model costs nothing,
// as in torch, whose optimizers make state only for parameters that get a gradient, and
// in DeepSpeed). A parameter unfrozen later (progressive unfreezing) would get gradients
// that nothing steps, so plain PyTorch training it and strata not would part without a
// word: step() refuses it, before anything steps. A parameter trainable when built and
// frozen at once does not step until its first gradient, as a torch optimizer holding it;
// one frozen after it had gradients steps with zero ones (torch's zero_grad(set_to_none=False)).
Status Engine::Impl::check_still_frozen() const {
  for (const std::size_t i : frozen_at_build) {
    if (!all_params[i].requires_grad()) continue;
    return make_error(ErrorCode::kUnimplemented,
                      "parameter '{}' was frozen (requires_grad=False) when the engine was built and requires grad "
                      "now: the engine keeps optimizer state only for the parameters that were trainable then, so "
                      "it would not train this one. Make it trainable when building the engine and freeze it right after "
                      "with requires_grad_(False) (until its first gradient it does not step, as in torch), or save a "
                      "checkpoint, unfreeze it and build a new engine that loads it", param_names[i]);
  }
  return ok();
}

}  // namespace strata::engine
