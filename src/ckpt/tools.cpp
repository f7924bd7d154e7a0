// strata ckpt's offline tools: verify, export to safetensors, reshard.
#include "strata/ckpt/tools.h"

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include "commit.h"
#include "engine/io_tensor.h"
#include "saved_files.h"
#include "strata/ckpt/checkpoint.h"

namespace strata::ckpt {
namespace fs = std::filesystem;
using engine::bytes_of;

Result<std::vector<std::pair<std::string, Status>>> verify_checkpoint(const fs::path& path) {
  STRATA_ASSIGN_OR_RETURN(fs::path dir, resolve_checkpoint(path));
  STRATA_ASSIGN_OR_RETURN(CheckpointMeta m, read_meta(dir));
  SavedFiles files(dir, m);
  std::vector<std::pair<std::string, Status>> out;
  for (const FileMeta& f : m.files) out.emplace_back(f.name, files.verify(f));
  return out;
}

namespace {

// safetensors' name for a dtype a buffer keeps in the export (floating buffers take the
// export's dtype, as the parameters do); nullopt: not one it has.
std::optional<std::string> safetensors_dtype(at::ScalarType t) {
  switch (t) {
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kShort: return "I16";
    case at::kChar: return "I8";
    case at::kByte: return "U8";
    case at::kBool: return "BOOL";
    default: return std::nullopt;
  }
}

struct Planned {
  std::size_t param;
  ExportName as;
  std::vector<std::int64_t> shape;  // as written
  std::uint64_t begin = 0, end = 0;
};

}  // namespace

Result<ExportResult> export_safetensors(const fs::path& path, const ExportOptions& o) {
  if (o.dtype != at::kFloat && o.dtype != at::kBFloat16) {
    return make_error(ErrorCode::kInvalidArgument, "export: dtype must be fp32 or bf16");
  }
  STRATA_ASSIGN_OR_RETURN(fs::path dir, resolve_checkpoint(path));
  STRATA_ASSIGN_OR_RETURN(CheckpointMeta m, read_meta(dir));
  const std::uint64_t elem = o.dtype == at::kFloat ? 4 : 2;
  // The header first: every tensor's place is known from the shapes alone.
  std::vector<Planned> plan;
  nlohmann::ordered_json header;
  std::uint64_t at = 0;
  for (std::size_t p = 0; p < m.params.size(); ++p) {
    const ParamMeta& pm = m.params[p];
    ExportName as{.name = pm.name};
    if (o.rename)
      if (auto r = o.rename(pm)) as = *r;
    std::vector<std::int64_t> shape = pm.shape;
    if (as.transpose) {
      if (shape.size() != 2) return make_error(ErrorCode::kInvalidArgument, "export: cannot transpose '{}': not 2-D", pm.name);
      std::swap(shape[0], shape[1]);
    }
    if (header.contains(as.name)) return make_error(ErrorCode::kInvalidArgument, "export: two tensors named '{}'", as.name);
    const std::uint64_t bytes = static_cast<std::uint64_t>(pm.numel) * elem;
    header[as.name] = {{"dtype", o.dtype == at::kFloat ? "F32" : "BF16"}, {"shape", shape}, {"data_offsets", {at, at + bytes}}};
    plan.push_back({.param = p, .as = as, .shape = shape, .begin = at, .end = at + bytes});
    at += bytes;
  }
  // The model's buffers (batch norm's statistics) after the parameters, whole: without
  // them the exported model would not compute what the trained one did.
  struct PlannedBuffer {
    std::size_t index;
    at::ScalarType saved, written;
  };
  std::vector<PlannedBuffer> buffers;
  for (std::size_t b = 0; m.buffers && b < m.buffers->size(); ++b) {
    const BufferMeta& bm = (*m.buffers)[b];
    STRATA_ASSIGN_OR_RETURN(at::ScalarType saved, buffer_dtype(bm));
    const at::ScalarType written = at::isFloatingType(saved) ? o.dtype : saved;
    const std::optional<std::string> name = at::isFloatingType(saved) ? std::optional<std::string>(o.dtype == at::kFloat ? "F32" : "BF16")
                                                                      : safetensors_dtype(saved);
    if (!name) return make_error(ErrorCode::kUnimplemented, "export: buffer '{}' is {}, which safetensors has no type for", bm.name, bm.dtype);
    if (header.contains(bm.name)) return make_error(ErrorCode::kInvalidArgument, "export: two tensors named '{}'", bm.name);
    const std::uint64_t bytes = static_cast<std::uint64_t>(c10::multiply_integers(bm.shape)) * c10::elementSize(written);
    header[bm.name] = {{"dtype", *name}, {"shape", bm.shape}, {"data_offsets", {at, at + bytes}}};
    buffers.push_back({.index = b, .saved = saved, .written = written});
    at += bytes;
  }
  header["__metadata__"] = {{"format", "pt"}, {"strata_step", std::to_string(m.step)}};
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  const std::uint64_t n = text.size();
  std::string prefix(8, '\0');
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((n >> (8 * i)) & 0xff);

  const fs::path tmp = o.out.string() + ".tmp";
  // Small staging (4 x 2 MiB): export's memory is the point, the file is written once.
  STRATA_ASSIGN_OR_RETURN(ShardFileWriter w, ShardFileWriter::create(tmp.string(), at + text.size() + 8, 2u << 20));
  auto fail = [&](Error e) -> Result<ExportResult> {
    std::error_code ec;
    fs::remove(tmp, ec);
    return std::unexpected(std::move(e));
  };
  if (auto r = w.append(std::as_bytes(std::span(prefix.data(), 8))); !r) return fail(std::move(r).error());
  if (auto r = w.append(std::as_bytes(std::span(text.data(), text.size()))); !r) return fail(std::move(r).error());
  SavedFiles files(dir, m);
  for (const Planned& t : plan) {
    const ParamMeta& pm = m.params[t.param];
    const std::int64_t piece = t.as.transpose ? pm.numel : std::max<std::int64_t>(1, o.piece_elems);
    for (std::int64_t from = 0; from < pm.numel; from += piece) {
      const std::int64_t k = std::min(piece, pm.numel - from);
      at::Tensor v = at::empty({k}, at::kFloat);
      if (Status st = files.read_param(t.param, "values", from, k, v.data_ptr<float>()); !st) return fail(std::move(st).error());
      if (t.as.transpose) v = v.view({pm.shape[0], pm.shape[1]}).t().contiguous().view({-1});
      if (o.dtype != at::kFloat) v = v.to(o.dtype);  // round to nearest even
      if (auto r = w.append(bytes_of(v)); !r) return fail(std::move(r).error());
    }
  }
  for (const PlannedBuffer& b : buffers) {
    at::Tensor v = at::empty((*m.buffers)[b.index].shape, b.saved);
    if (Status st = files.read_buffer(b.index, {static_cast<std::byte*>(v.data_ptr()), v.nbytes()}); !st) {
      return fail(std::move(st).error());
    }
    if (auto r = w.append(bytes_of(v.to(b.written).contiguous())); !r) return fail(std::move(r).error());
  }
  auto sum = w.finish();
  if (!sum) return fail(std::move(sum).error());
  std::error_code ec;
  fs::rename(tmp, o.out, ec);
  if (ec) return fail(Error(ErrorCode::kIoError, "rename: " + ec.message()));
  return ExportResult{.tensors = plan.size(), .bytes = sum->bytes};
}

Result<fs::path> reshard_checkpoint(const fs::path& path, int world, const fs::path& out_root) {
  if (world < 1) return make_error(ErrorCode::kInvalidArgument, "reshard: world must be at least 1, got {}", world);
  STRATA_ASSIGN_OR_RETURN(fs::path dir, resolve_checkpoint(path));
  STRATA_ASSIGN_OR_RETURN(CheckpointMeta m, read_meta(dir));
  SavedFiles files(dir, m);
  CheckpointMeta out = m;
  out.world = out.shard_world = world;
  out.files.clear();
  for (ChunkMeta& c : out.chunks) {
    c.elems = (c.elems + world - 1) / world * world;
    c.shard_elems = c.elems / world;
  }
  const fs::path tmp = out_root / (step_name(m.step) + ".tmp"), dst = out_root / step_name(m.step);
  std::error_code ec;
  fs::create_directories(out_root, ec);
  fs::remove_all(tmp, ec);
  fs::create_directory(tmp, ec);
  if (ec) return make_error(ErrorCode::kIoError, "cannot create {}: {}", tmp.string(), ec.message());
  for (int r = 0; r < world; ++r) {
    FileMeta f{.name = fmt::format("rank-{:05}.bin", r), .shard_rank = r};
    STRATA_ASSIGN_OR_RETURN(ShardFileWriter w, ShardFileWriter::create((tmp / f.name).string()));
    for (std::size_t c = 0; c < out.chunks.size(); ++c) {
      const ChunkMeta& ch = out.chunks[c];
      std::vector<std::string> tensors = {"values"};
      if (ch.trains) {
        tensors = {"master"};
        tensors.insert(tensors.end(), m.state_names.begin(), m.state_names.end());
      }
      const std::int64_t begin = r * ch.shard_elems;
      const std::int64_t have = std::clamp<std::int64_t>(m.chunks[c].elems - begin, 0, ch.shard_elems);
      for (const std::string& t : tensors) {
        at::Tensor v = at::zeros({ch.shard_elems}, at::kFloat);  // padding past the old chunk stays zero
        STRATA_RETURN_IF_ERROR(files.read_chunk(static_cast<std::int64_t>(c), t, begin, have, v.data_ptr<float>()));
        STRATA_ASSIGN_OR_RETURN(RecordSpan span, w.append(bytes_of(v)));
        f.records.push_back({.chunk = static_cast<std::int64_t>(c), .tensor = t,
                             .elems = static_cast<std::uint64_t>(ch.shard_elems), .span = std::move(span)});
      }
    }
    STRATA_ASSIGN_OR_RETURN(f.sum, w.finish());
    out.files.push_back(std::move(f));
  }
  for (const FileMeta& whole : m.files) {  // whole parameters and buffers: the same files
    if (whole.shard_rank >= 0) continue;
    fs::copy_file(dir / whole.name, tmp / whole.name, ec);
    if (ec) return make_error(ErrorCode::kIoError, "copy {}: {}", whole.name, ec.message());
    out.files.push_back(whole);
  }
  const std::string text = to_json(out).dump(1);
  STRATA_RETURN_IF_ERROR(write_synced(tmp / kMetaFile, text));
  STRATA_RETURN_IF_ERROR(write_synced(tmp / kMetaSumFile, meta_checksum(text) + "\n"));
  STRATA_RETURN_IF_ERROR(fsync_dir(tmp));
  if (fs::exists(dst, ec)) return make_error(ErrorCode::kFailedPrecondition, "{} exists", dst.string());
  fs::rename(tmp, dst, ec);
  if (ec) return make_error(ErrorCode::kIoError, "rename: {}", ec.message()).with_path(dst.string());
  STRATA_RETURN_IF_ERROR(fsync_dir(out_root));
  STRATA_RETURN_IF_ERROR(write_durable(out_root, "latest", step_name(m.step) + "\n"));
  return dst;
}

}  // namespace strata::ckpt
