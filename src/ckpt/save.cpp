// save_checkpoint (Note [checkpoint commit] in checkpoint.h).
#include <ATen/ATen.h>
#include <unistd.h>

#include "collective.h"
#include "commit.h"
#include "engine/io_tensor.h"
#include "strata/base/log.h"
#include "strata/ckpt/checkpoint.h"
#include "strata/comm/communicator.h"

namespace strata::ckpt {
namespace fs = std::filesystem;
using engine::bytes_of;
namespace {

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "fp32";
    case at::kBFloat16: return "bf16";
    case at::kHalf: return "fp16";
    case at::kDouble: return "fp64";
    default: return c10::toString(t);
  }
}

// What every rank knows alike: the layout, the parameters, the training state.
CheckpointMeta describe(const engine::Engine& eng, std::int64_t step) {
  const engine::ChunkStore& store = eng.store();
  CheckpointMeta m;
  m.step = step;
  m.optimizer_steps = eng.steps();
  m.world = eng.communicator().world();
  m.shard_world = eng.shard_world();
  m.stage = eng.stage();
  m.optimizer = eng.optimizer_name();
  m.state_names = eng.state_names();
  m.lr = eng.lr();
  if (eng.n_param_groups() > 1)
    for (std::size_t g = 0; g < eng.n_param_groups(); ++g) m.lr_scales.push_back(eng.lr_scale(g));
  m.weight_decays = eng.group_weight_decays();
  m.betas = eng.betas();
  m.momentum = eng.momentum();
  m.compute_dtype = dtype_name(eng.options().compute_dtype);
  m.loss_scaler = eng.loss_scaler().state();
  for (std::uint32_t c = 0; c < store.num_chunks(); ++c)
    m.chunks.push_back({.elems = store.chunk_elems(c), .shard_elems = store.shard_elems(c), .trains = eng.chunk_trains(c)});
  for (std::size_t i = 0; i < eng.params().size(); ++i) {
    const at::Tensor& p = eng.params()[i];
    ParamMeta pm{.name = eng.param_names()[i], .shape = p.sizes().vec(), .dtype = dtype_name(p.scalar_type()),
                 .trainable = p.requires_grad(), .numel = p.numel()};
    if (const int s = eng.store_index(i); s >= 0) {
      const auto& where = store.layout().where[static_cast<std::size_t>(s)];
      pm.chunk = where.chunk;
      pm.offset = static_cast<std::int64_t>(where.offset_elems);
      const engine::Engine::ParamStep st = eng.param_step(static_cast<std::size_t>(s));
      pm.steps = st.steps;
      pm.had_grad = st.had_grad;
    }
    m.params.push_back(std::move(pm));
  }
  return m;
}

Result<RecordMeta> append(ShardFileWriter& w, std::int64_t chunk, std::int64_t param, std::string tensor, const at::Tensor& t) {
  const at::Tensor v = t.to(at::kFloat).contiguous();
  STRATA_ASSIGN_OR_RETURN(RecordSpan span, w.append(bytes_of(v)));
  return RecordMeta{.chunk = chunk, .param = param, .tensor = std::move(tensor),
                    .elems = static_cast<std::uint64_t>(v.numel()), .span = std::move(span)};
}

// This rank's data file: its shard of every chunk, from whatever tier holds it, one
// chunk in memory at a time.
Result<FileMeta> write_shards(engine::Engine& eng, const fs::path& dir, const SaveOptions& o,
                              const std::function<void(std::string_view)>& point) {
  FileMeta f{.name = fmt::format("rank-{:05}.bin", eng.shard_rank()), .shard_rank = eng.shard_rank()};
  std::uint64_t expect = 0;
  for (std::uint32_t c = 0; c < eng.store().num_chunks(); ++c)
    expect += static_cast<std::uint64_t>(eng.store().shard_elems(c)) * 4 * (eng.chunk_trains(c) ? 1 + eng.state_names().size() : 1);
  STRATA_ASSIGN_OR_RETURN(ShardFileWriter w, ShardFileWriter::create((dir / f.name).string(), expect, 8u << 20, o.faults));
  // nvme-resident state: chunk c+1's reads run while chunk c is written out.
  const std::uint32_t n = static_cast<std::uint32_t>(eng.store().num_chunks());
  if (n > 0) eng.begin_read_shard(0);
  for (std::uint32_t c = 0; c < n; ++c) {
    STRATA_ASSIGN_OR_RETURN(engine::Engine::ShardTensors s, eng.read_shard(c));
    if (c + 1 < n) eng.begin_read_shard(c + 1);
    std::vector<std::pair<std::string, const at::Tensor*>> records = {{"values", &s.values}};
    if (eng.chunk_trains(c)) {
      records = {{"master", &s.master}};
      for (std::size_t k = 0; k < s.states.size(); ++k) records.emplace_back(eng.state_names()[k], &s.states[k]);
    }
    for (auto& [tensor, t] : records) {
      STRATA_ASSIGN_OR_RETURN(RecordMeta r, append(w, c, -1, tensor, *t));
      f.records.push_back(std::move(r));
    }
    if (c == 0) point("shard");  // mid-file
  }
  STRATA_ASSIGN_OR_RETURN(f.sum, w.finish());
  return f;
}

// Parameters the chunks do not hold (frozen, stages 0-2): whole, from rank 0.
Result<FileMeta> write_outside(engine::Engine& eng, const fs::path& dir) {
  FileMeta f{.name = "params.bin", .shard_rank = kParamsFileRank};
  STRATA_ASSIGN_OR_RETURN(ShardFileWriter w, ShardFileWriter::create((dir / f.name).string()));
  for (std::size_t i = 0; i < eng.params().size(); ++i) {
    if (eng.store_index(i) >= 0) continue;
    STRATA_ASSIGN_OR_RETURN(RecordMeta r, append(w, -1, static_cast<std::int64_t>(i), "values", eng.params()[i].detach().reshape({-1})));
    f.records.push_back(std::move(r));
  }
  STRATA_ASSIGN_OR_RETURN(f.sum, w.finish());
  return f;
}

// The model's buffers: whole, from rank 0, each in its own dtype.
Result<FileMeta> write_buffers(const std::vector<NamedBuffer>& buffers, const fs::path& dir) {
  FileMeta f{.name = "buffers.bin", .shard_rank = kBuffersFileRank};
  STRATA_ASSIGN_OR_RETURN(ShardFileWriter w, ShardFileWriter::create((dir / f.name).string()));
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    const at::Tensor v = buffers[i].value.detach().cpu().contiguous();
    STRATA_ASSIGN_OR_RETURN(RecordSpan span, w.append(bytes_of(v)));
    f.records.push_back({.chunk = -1, .param = static_cast<std::int64_t>(i), .tensor = "buffer",
                         .elems = static_cast<std::uint64_t>(v.numel()), .span = std::move(span)});
  }
  STRATA_ASSIGN_OR_RETURN(f.sum, w.finish());
  return f;
}

std::vector<BufferMeta> describe(const std::vector<NamedBuffer>& buffers) {
  std::vector<BufferMeta> out;
  for (const NamedBuffer& b : buffers)
    out.push_back({.name = b.name, .shape = b.value.sizes().vec(), .dtype = c10::toString(b.value.scalar_type())});
  return out;
}

Result<std::vector<FileMeta>> write_files(engine::Engine& eng, const fs::path& tmp, const SaveOptions& o,
                                         const std::function<void(std::string_view)>& point) {
  std::vector<FileMeta> mine;
  const int rank = eng.communicator().rank();
  // At stage 0 every rank holds everything: rank 0 writes it.
  if (rank < eng.shard_world()) {
    STRATA_ASSIGN_OR_RETURN(FileMeta f, write_shards(eng, tmp, o, point));
    mine.push_back(std::move(f));
  }
  bool outside = false;
  for (std::size_t i = 0; i < eng.params().size(); ++i) outside |= eng.store_index(i) < 0;
  if (rank == 0 && outside) {
    STRATA_ASSIGN_OR_RETURN(FileMeta f, write_outside(eng, tmp));
    mine.push_back(std::move(f));
  }
  if (rank == 0 && !o.buffers.empty()) {
    STRATA_ASSIGN_OR_RETURN(FileMeta f, write_buffers(o.buffers, tmp));
    mine.push_back(std::move(f));
  }
  return mine;
}

// The error a user sees: what failed, at which step, and that the last checkpoint is intact.
Error save_error(Error e, std::int64_t step, const fs::path& root) {
  const std::optional<std::int64_t> prev = latest_step(root);
  const std::string intact = prev ? fmt::format("the checkpoint of step {} is intact", *prev) : "no earlier checkpoint exists";
  const std::string what = e.code() == ErrorCode::kNoSpace ? fmt::format("no space left on {}", root.string())
                                                           : std::string(e.message());
  Error out(e.code(), fmt::format("{} while saving step {}; {}", what, step, intact));
  const ErrorContext& c = e.context();
  if (c.path) out.with_path(*c.path);
  if (c.offset) out.with_offset(*c.offset);
  if (c.rank) out.with_rank(*c.rank);
  if (c.op) out.with_op(*c.op);
  return out;
}

}  // namespace

Result<fs::path> save_checkpoint(engine::Engine& eng, const SaveOptions& o) {
  comm::Communicator& comm = eng.communicator();
  const bool root_rank = comm.rank() == 0;
  const std::int64_t step = o.step >= 0 ? o.step : eng.steps();
  const fs::path tmp = o.root / (step_name(step) + ".tmp"), dst = o.root / step_name(step);
  const std::function<void(std::string_view)> point = [&](std::string_view p) {
    if (o.on_point) o.on_point(p);
  };
  auto fail = [&](Error e) -> Result<fs::path> {
    if (root_rank) {
      std::error_code ec;
      fs::remove_all(tmp, ec);
    }
    return std::unexpected(save_error(std::move(e), step, o.root));
  };
  if (eng.options().wrap) {
    return make_error(ErrorCode::kUnimplemented, "checkpoints hold strata's fused optimizer state; an engine that wraps "
                      "a torch::optim optimizer (EngineOptions::wrap) keeps its state there: use consolidate_state_dict");
  }
  point("begin");
  // Rank 0 makes a fresh step-N.tmp (a crashed save may have left one).
  Status made = ok();
  if (root_rank) {
    std::error_code ec;
    fs::create_directories(o.root, ec);
    if (!ec) fs::remove_all(tmp, ec);
    if (!ec) fs::create_directory(tmp, ec);
    if (ec) made = make_error(code_from_errno(ec.value()), "cannot create the checkpoint directory: {}", ec.message()).with_path(tmp.string());
  }
  if (Status st = agree(comm, std::move(made)); !st) return fail(std::move(st).error());

  Result<std::vector<FileMeta>> files = write_files(eng, tmp, o, point);
  point("written");
  const std::string mine = files ? files_to_json(*files).dump() : std::string();
  if (Status st = agree(comm, files ? ok() : Status(std::unexpected(std::move(files).error()))); !st) return fail(std::move(st).error());
  auto all = all_gather_strings(comm, mine);
  if (!all) return fail(std::move(all).error());

  // Rank 0 commits; the others learn the outcome.
  Status committed = ok();
  if (root_rank) {
    committed = [&]() -> Status {
      CheckpointMeta m = describe(eng, step);
      m.config = o.config;
      m.client = o.client;
      m.buffers = describe(o.buffers);
      for (const std::string& s : *all) {
        if (s.empty()) continue;
        STRATA_ASSIGN_OR_RETURN(std::vector<FileMeta> part, files_from_json(nlohmann::json::parse(s)));
        for (FileMeta& f : part) m.files.push_back(std::move(f));
      }
      const std::string text = to_json(m).dump(1);
      STRATA_RETURN_IF_ERROR(write_synced(tmp / kMetaFile, text));
      STRATA_RETURN_IF_ERROR(write_synced(tmp / kMetaSumFile, meta_checksum(text) + "\n"));
      STRATA_RETURN_IF_ERROR(fsync_dir(tmp));
      point("meta");
      STRATA_RETURN_IF_ERROR(install(tmp, dst));
      STRATA_RETURN_IF_ERROR(fsync_dir(o.root));
      point("renamed");
      if (o.update_latest) {
        STRATA_RETURN_IF_ERROR(write_durable(o.root, "latest", step_name(step) + "\n"));
        point("latest");
      }
      prune(o.root, o.keep);
      return ok();
    }();
  }
  if (Status st = agree(comm, std::move(committed)); !st) return fail(std::move(st).error());
  return dst;
}

}  // namespace strata::ckpt
