#include "saved_files.h"

#include <fmt/format.h>

namespace strata::ckpt {

Result<c10::ScalarType> buffer_dtype(const BufferMeta& b) {
  using c10::ScalarType;
  for (ScalarType t : {ScalarType::Float, ScalarType::Double, ScalarType::Half, ScalarType::BFloat16, ScalarType::Long,
                       ScalarType::Int, ScalarType::Short, ScalarType::Char, ScalarType::Byte, ScalarType::Bool,
                       ScalarType::ComplexFloat, ScalarType::ComplexDouble}) {
    if (b.dtype == c10::toString(t)) return t;
  }
  return make_error(ErrorCode::kDataLoss, "buffer '{}' has dtype '{}', which this strata does not know", b.name, b.dtype);
}

Status SavedFiles::read_param(std::size_t p, std::string_view tensor, std::int64_t from, std::int64_t n, float* out) {
  const ParamMeta& pm = meta_.params[p];
  if (pm.chunk >= 0) return read_chunk(pm.chunk, tensor, pm.offset + from, n, out);
  const FileMeta* f = meta_.file_of(kParamsFileRank);  // kept outside the chunks: whole, in params.bin
  const RecordMeta* r = f ? f->find_param(static_cast<std::int64_t>(p)) : nullptr;
  if (!r) return missing(fmt::format("the values of '{}'", pm.name));
  return read_span(*f, *r, from, n, out);
}

Status SavedFiles::read_chunk(std::int64_t c, std::string_view tensor, std::int64_t from, std::int64_t n, float* out) {
  const ChunkMeta& ch = meta_.chunks.at(static_cast<std::size_t>(c));
  const std::string t = !ch.trains ? "values" : tensor == "values" ? "master" : std::string(tensor);
  for (std::int64_t done = 0; done < n;) {
    const std::int64_t pos = from + done;
    const auto rank = static_cast<int>(pos / ch.shard_elems);
    const std::int64_t in_shard = pos % ch.shard_elems, take = std::min(n - done, ch.shard_elems - in_shard);
    const FileMeta* f = meta_.file_of(rank);
    const RecordMeta* r = f ? f->find(c, t) : nullptr;
    if (!r) return missing(fmt::format("the {} of chunk {} of shard rank {}", t, c, rank));
    STRATA_RETURN_IF_ERROR(read_span(*f, *r, in_shard, take, out + done));
    done += take;
  }
  return ok();
}

Status SavedFiles::read_buffer(std::size_t b, std::span<std::byte> out) {
  const std::string& name = meta_.buffers.value().at(b).name;
  const FileMeta* f = meta_.file_of(kBuffersFileRank);
  const RecordMeta* r = f ? f->find_param(static_cast<std::int64_t>(b)) : nullptr;
  if (!r) return missing(fmt::format("the buffer '{}'", name));
  if (r->span.bytes != out.size()) {
    return make_error(ErrorCode::kDataLoss, "the buffer '{}' is {} bytes in the file, {} by its shape and dtype", name,
                      r->span.bytes, out.size())
        .with_path((dir_ / f->name).string());
  }
  STRATA_ASSIGN_OR_RETURN(ShardFileReader * rd, reader(*f));
  return rd->read(r->span, 0, out);
}

Status SavedFiles::verify(const FileMeta& f) {
  STRATA_ASSIGN_OR_RETURN(ShardFileReader * rd, reader(f));
  std::vector<RecordSpan> spans;
  for (const RecordMeta& r : f.records) spans.push_back(r.span);
  return rd->verify(f.sum, spans);
}

Status SavedFiles::missing(const std::string& what) const {
  return make_error(ErrorCode::kDataLoss, "the checkpoint's metadata lists no record for {}", what)
      .with_path((dir_ / kMetaFile).string());
}

Result<ShardFileReader*> SavedFiles::reader(const FileMeta& f) {
  auto it = open_.find(f.name);
  if (it == open_.end()) {
    STRATA_ASSIGN_OR_RETURN(ShardFileReader rd, ShardFileReader::open((dir_ / f.name).string(), f.sum.bytes));
    it = open_.emplace(f.name, std::move(rd)).first;
  }
  return &it->second;
}

Status SavedFiles::read_span(const FileMeta& f, const RecordMeta& r, std::int64_t from, std::int64_t n, float* out) {
  if (from < 0 || static_cast<std::uint64_t>(from + n) > r.elems) {
    return make_error(ErrorCode::kDataLoss, "a record of {} elements read at {}+{}", r.elems, from, n)
        .with_path((dir_ / f.name).string());
  }
  STRATA_ASSIGN_OR_RETURN(ShardFileReader * rd, reader(f));
  return rd->read(r.span, static_cast<std::uint64_t>(from) * 4,
                  {reinterpret_cast<std::byte*>(out), static_cast<std::size_t>(n) * 4});
}

}  // namespace strata::ckpt
