// load_checkpoint (Note [checkpoint resharding] in checkpoint.h).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <fstream>
#include <map>
#include <unordered_map>

#include <fmt/ranges.h>  // fmt::join (in format.h before fmt 11)

#include "collective.h"
#include "commit.h"
#include "saved_files.h"
#include "strata/base/log.h"
#include "strata/ckpt/checkpoint.h"

namespace strata::ckpt {
namespace fs = std::filesystem;
namespace {

// A tensor the model has or the checkpoint holds, matched by name.
struct Named {
  std::string_view name;
  std::vector<std::int64_t> shape;
};

std::string shape_str(const std::vector<std::int64_t>& shape) { return c10::str(c10::IntArrayRef(shape)); }

// Each wanted tensor's index among the saved ones, by name (the wanted ones the
// checkpoint lacks are left out). Every difference, a name on one side only or another
// shape, goes to `diffs`, prefixed with `kind` ("" or "buffer ").
std::vector<std::size_t> match_names(const std::vector<Named>& saved, const std::vector<Named>& want,
                                     std::string_view kind, std::vector<std::string>& diffs) {
  std::unordered_map<std::string_view, std::size_t> index;
  for (std::size_t i = 0; i < saved.size(); ++i) index.emplace(saved[i].name, i);
  std::vector<std::size_t> out;
  std::vector<bool> used(saved.size());
  for (const Named& w : want) {
    auto it = index.find(w.name);
    if (it == index.end()) {
      diffs.push_back(fmt::format("{}'{}' {} is not in the checkpoint", kind, w.name, shape_str(w.shape)));
      continue;
    }
    used[it->second] = true;
    out.push_back(it->second);
    if (saved[it->second].shape != w.shape) {
      diffs.push_back(fmt::format("{}'{}' is {} in the model, {} in the checkpoint", kind, w.name, shape_str(w.shape),
                                  shape_str(saved[it->second].shape)));
    }
  }
  for (std::size_t i = 0; i < saved.size(); ++i)
    if (!used[i]) diffs.push_back(fmt::format("{}'{}' {} is in the checkpoint, not in the model", kind, saved[i].name,
                                              shape_str(saved[i].shape)));
  return out;
}

// The differences as one error: the first 20 listed, then how many more.
Error mismatch(std::string_view what, const std::vector<std::string>& diffs, const fs::path& dir) {
  std::string list;
  for (std::size_t i = 0; i < diffs.size() && i < 20; ++i) list += "\n  " + diffs[i];
  if (diffs.size() > 20) list += fmt::format("\n  ... and {} more", diffs.size() - 20);
  return Error(ErrorCode::kInvalidArgument, fmt::format("{} ({} differences):{}", what, diffs.size(), list))
      .with_path(dir.string());
}

// Each engine parameter's saved index, by name; differences listed.
Result<std::vector<std::size_t>> match(const engine::Engine& eng, const CheckpointMeta& m, const fs::path& dir) {
  std::vector<Named> saved, want;
  for (const auto& p : m.params) saved.push_back({p.name, p.shape});
  for (std::size_t i = 0; i < eng.params().size(); ++i)
    want.push_back({eng.param_names()[i], eng.params()[i].sizes().vec()});
  std::vector<std::string> diffs;
  std::vector<std::size_t> out = match_names(saved, want, "", diffs);
  if (diffs.empty()) return out;
  return std::unexpected(mismatch("the checkpoint does not match the model", diffs, dir));
}

// The engine's store parameter -> its index in params().
std::vector<std::size_t> store_to_engine(const engine::Engine& eng) {
  std::vector<std::size_t> out(eng.store().params().size());
  for (std::size_t i = 0; i < eng.params().size(); ++i)
    if (const int s = eng.store_index(i); s >= 0) out[static_cast<std::size_t>(s)] = i;
  return out;
}

// Each wanted buffer's saved index, by name: the same names and shapes, or an error
// listing the differences (before loading writes anything). Empty: nothing to load.
Result<std::vector<std::size_t>> match_buffers(const CheckpointMeta& m, const fs::path& dir, const std::vector<NamedBuffer>& want) {
  if (want.empty()) return std::vector<std::size_t>{};
  if (!m.buffers) {
    log::warn("{} was saved before checkpoints held the model's buffers; the model keeps its own", dir.string());
    return std::vector<std::size_t>{};
  }
  std::vector<Named> saved, named;
  for (const BufferMeta& b : *m.buffers) saved.push_back({b.name, b.shape});
  for (const NamedBuffer& b : want) named.push_back({b.name, b.value.sizes().vec()});
  std::vector<std::string> diffs;
  std::vector<std::size_t> out = match_names(saved, named, "buffer ", diffs);
  for (std::size_t i : out)
    if (auto t = buffer_dtype((*m.buffers)[i]); !t) diffs.push_back(std::string(t.error().message()));
  if (diffs.empty()) return out;
  return std::unexpected(mismatch("the checkpoint's buffers do not match the model's", diffs, dir));
}

// The saved buffers into `want`, in place (converted to each one's dtype).
Status read_buffers(const CheckpointMeta& m, SavedFiles& files, const std::vector<NamedBuffer>& want,
                    const std::vector<std::size_t>& saved_of) {
  at::NoGradGuard no_grad;
  for (std::size_t i = 0; i < saved_of.size(); ++i) {
    const BufferMeta& bm = (*m.buffers)[saved_of[i]];
    at::Tensor v = at::empty(bm.shape, *buffer_dtype(bm));
    STRATA_RETURN_IF_ERROR(files.read_buffer(saved_of[i], {static_cast<std::byte*>(v.data_ptr()), v.nbytes()}));
    want[i].value.copy_(v);
  }
  return ok();
}

Status load_into(engine::Engine& eng, const CheckpointMeta& m, const fs::path& dir, const LoadOptions& o) {
  if (eng.options().wrap) {
    return make_error(ErrorCode::kUnimplemented, "checkpoints hold strata's fused optimizer state; an engine that wraps "
                      "a torch::optim optimizer (EngineOptions::wrap) keeps its state there: use load_state_dict");
  }
  STRATA_ASSIGN_OR_RETURN(std::vector<std::size_t> saved_of, match(eng, m, dir));
  STRATA_ASSIGN_OR_RETURN(std::vector<std::size_t> buffer_of, match_buffers(m, dir, o.buffers));
  const bool states = o.optimizer_states && !o.module_only;
  if (states && (m.optimizer != eng.optimizer_name() || m.state_names != eng.state_names())) {
    return make_error(ErrorCode::kInvalidArgument,
                      "the checkpoint holds {} optimizer state ({}), the engine runs {}; load without the optimizer "
                      "state to start it fresh",
                      m.optimizer, fmt::join(m.state_names, ", "), eng.optimizer_name())
        .with_path(dir.string());
  }
  SavedFiles files(dir, m);
  const engine::ChunkStore& store = eng.store();
  const std::vector<std::size_t> engine_of = store_to_engine(eng);
  auto has_state = [&](std::size_t p) {
    const ParamMeta& pm = m.params[p];
    return states && pm.chunk >= 0 && m.chunks[static_cast<std::size_t>(pm.chunk)].trains;
  };
  for (std::uint32_t c = 0; c < store.num_chunks(); ++c) {
    // Memory-tier state comes back as the engine's own tensors: the saved values are
    // read straight into them (write_shard then has nothing to copy), so a load that
    // fails part way leaves the engine partly loaded (the error says so). nvme state is
    // not read: it is replaced whole.
    engine::Engine::ShardTensors s = eng.load_target(c);
    const bool trains = eng.chunk_trains(c);
    at::Tensor& main = trains ? s.master : s.values;
    std::vector<at::Tensor>& st = s.states;
    // Tensor by tensor, slot by slot: each saved record is read front to back, so the
    // reader's blocks are read and verified once (ShardFileReader keeps the last ones).
    const std::vector<engine::ChunkStore::ShardSlot> slots = store.shard_slots(c, eng.shard_rank());
    Status read = [&]() -> Status {
      for (std::size_t k = 0; k <= st.size(); ++k) {
        const std::string_view tensor = k == 0 ? (trains ? "master" : "values") : std::string_view(eng.state_names()[k - 1]);
        at::Tensor& dst = k == 0 ? main : st[k - 1];
        for (const auto& slot : slots) {
          const std::size_t p = saved_of[engine_of[slot.param]];
          if (k > 0 && !has_state(p)) {  // frozen when saved, or the state not loaded: it starts fresh
            dst.narrow(0, slot.shard_offset, slot.numel).fill_(eng.initial_state_value(k - 1));
            continue;
          }
          STRATA_RETURN_IF_ERROR(files.read_param(p, tensor, slot.param_offset, slot.numel, dst.data_ptr<float>() + slot.shard_offset));
        }
      }
      return ok();
    }();
    // A bad file one rank reads fails every rank here, before write_shard's collectives.
    if (Status st_all = agree(eng.communicator(), std::move(read)); !st_all) {
      return make_error(std::move(st_all).error().with_note(
          "loading failed part way; the engine's state is partly loaded: load again, or start from a new engine"));
    }
    STRATA_RETURN_IF_ERROR(eng.write_shard(c, s));
  }
  // Every trained parameter's step count and gradient flag, on every rank alike, not only
  // those in this rank's shards: ParamSteps::sync skips its collective once every
  // parameter has had a gradient, so ranks that disagree on that deadlock in the next
  // step (a rank whose shards held every parameter of a small model skipped it).
  for (std::size_t sp = 0; sp < engine_of.size(); ++sp) {
    if (!eng.chunk_trains(store.layout().where[sp].chunk)) continue;
    const std::size_t p = saved_of[engine_of[sp]];
    eng.set_param_step(sp, has_state(p) ? engine::Engine::ParamStep{.steps = m.params[p].steps, .had_grad = m.params[p].had_grad}
                                        : engine::Engine::ParamStep{});
  }
  // Parameters outside the chunks (frozen, stages 0-2): whole on every rank.
  Status outside = ok();
  for (std::size_t i = 0; outside && i < eng.params().size(); ++i) {
    if (eng.store_index(i) >= 0) continue;
    at::Tensor v = at::empty({eng.params()[i].numel()}, at::kFloat);
    outside = files.read_param(saved_of[i], "values", 0, v.numel(), v.data_ptr<float>());
    at::NoGradGuard no_grad;
    if (outside) eng.params()[i].detach().view({-1}).copy_(v);
  }
  if (outside) outside = read_buffers(m, files, o.buffers, buffer_of);
  Status ended = eng.end_write_shards();
  STRATA_RETURN_IF_ERROR(agree(eng.communicator(), outside ? std::move(ended) : std::move(outside)));
  if (states) {
    eng.restore_loss_scaler(m.loss_scaler);
    eng.set_lr(m.lr);
    // Scales saved with as many groups as the engine has: the groups' lrs of the saved
    // run (a torch scheduler may have moved them apart). Otherwise the engine's stand.
    if (m.lr_scales.size() == eng.n_param_groups())
      for (std::size_t g = 0; g < m.lr_scales.size(); ++g) STRATA_RETURN_IF_ERROR(eng.set_lr_scale(g, m.lr_scales[g]));
    // Likewise each group's weight decay, the betas and the momentum.
    if (m.weight_decays.size() == eng.n_param_groups())
      STRATA_RETURN_IF_ERROR(eng.set_group_weight_decays(m.weight_decays));
    if (m.betas && eng.betas()) STRATA_RETURN_IF_ERROR(eng.set_betas(*m.betas));
    if (m.momentum && eng.momentum() && m.momentum != eng.momentum())
      STRATA_RETURN_IF_ERROR(eng.set_momentum(*m.momentum));
  }
  if (!o.module_only) eng.set_steps(m.optimizer_steps);
  return ok();
}

}  // namespace

Result<fs::path> resolve_checkpoint(const fs::path& path) {
  std::error_code ec;
  if (fs::exists(path / kMetaFile, ec)) return path;
  if (fs::exists(path / "latest", ec)) {
    const std::optional<std::int64_t> s = latest_step(path);
    if (!s) return make_error(ErrorCode::kDataLoss, "'latest' does not name a checkpoint").with_path((path / "latest").string());
    return path / step_name(*s);
  }
  if (!fs::exists(path, ec)) return make_error(ErrorCode::kNotFound, "no such checkpoint directory").with_path(path.string());
  return make_error(ErrorCode::kNotFound, "not a checkpoint (no {}) nor a checkpoints directory (no latest)", kMetaFile)
      .with_path(path.string());
}

Result<Loaded> load_checkpoint(engine::Engine& eng, const fs::path& path, const LoadOptions& o) {
  comm::Communicator& comm = eng.communicator();
  Result<Loaded> loaded = [&]() -> Result<Loaded> {
    STRATA_ASSIGN_OR_RETURN(fs::path dir, resolve_checkpoint(path));
    STRATA_ASSIGN_OR_RETURN(CheckpointMeta m, read_meta(dir));
    return Loaded{.dir = std::move(dir), .meta = std::move(m)};
  }();
  // Every rank must agree before the collectives of loading start.
  STRATA_RETURN_IF_ERROR(agree(comm, loaded ? ok() : Status(std::unexpected(loaded.error()))));
  STRATA_RETURN_IF_ERROR(load_into(eng, loaded->meta, loaded->dir, o));
  return loaded;
}

}  // namespace strata::ckpt
