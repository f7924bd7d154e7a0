#include "strata/ckpt/meta.h"

#include <fmt/format.h>

#include <fstream>
#include <stdexcept>
#include <utility>

namespace strata::ckpt {
namespace {

using nlohmann::json;

// A whole number of type T, or an exception (from_json turns it into an error):
// json::get<T>() converts any JSON number, and a float beyond T's range (1e74 as an
// offset) is undefined behaviour (found by fuzz_ckpt_meta).
template <class T>
T whole(const json& v) {
  if (v.is_number_unsigned() && std::in_range<T>(v.get<std::uint64_t>())) return static_cast<T>(v.get<std::uint64_t>());
  if (v.is_number_integer() && !v.is_number_unsigned() && std::in_range<T>(v.get<std::int64_t>())) {
    return static_cast<T>(v.get<std::int64_t>());
  }
  throw std::runtime_error(fmt::format("expected a whole number that fits in {} bits, got {}", sizeof(T) * 8, v.dump()));
}
std::vector<std::int64_t> whole_list(const json& v) {
  if (!v.is_array()) throw std::runtime_error(fmt::format("expected a list of whole numbers, got {}", v.dump()));
  std::vector<std::int64_t> out;
  for (const json& e : v) out.push_back(whole<std::int64_t>(e));
  return out;
}

// Checksums are 16 hex digits: a JSON number loses 64-bit integers in most readers.
std::string hex(std::uint64_t v) { return fmt::format("{:016x}", v); }
std::uint64_t unhex(const json& j) { return std::stoull(j.get<std::string>(), nullptr, 16); }

json span_json(const RecordSpan& s) {
  json blocks = json::array();
  for (std::uint64_t b : s.blocks) blocks.push_back(hex(b));
  return {{"offset", s.offset}, {"bytes", s.bytes}, {"block_xxh3", blocks}};
}

RecordSpan span_from(const json& j) {
  RecordSpan s{.offset = whole<std::uint64_t>(j.at("offset")), .bytes = whole<std::uint64_t>(j.at("bytes"))};
  for (const json& b : j.at("block_xxh3")) s.blocks.push_back(unhex(b));
  if (s.blocks.size() != (s.bytes + kBlockBytes - 1) / kBlockBytes) throw std::runtime_error("a record's block checksums do not cover it");
  return s;
}

}  // namespace

const RecordMeta* FileMeta::find(std::int64_t chunk, std::string_view tensor) const {
  for (const RecordMeta& r : records)
    if (r.chunk == chunk && r.tensor == tensor) return &r;
  return nullptr;
}

const RecordMeta* FileMeta::find_param(std::int64_t param) const {
  for (const RecordMeta& r : records)
    if (r.chunk < 0 && r.param == param) return &r;
  return nullptr;
}

const FileMeta* CheckpointMeta::file_of(int shard_rank) const {
  for (const FileMeta& f : files)
    if (f.shard_rank == shard_rank) return &f;
  return nullptr;
}

std::uint64_t CheckpointMeta::data_bytes() const {
  std::uint64_t b = 0;
  for (const FileMeta& f : files) b += f.sum.bytes;
  return b;
}

json files_to_json(std::span<const FileMeta> files) {
  json out = json::array();
  for (const FileMeta& f : files) {
    json records = json::array();
    for (const RecordMeta& r : f.records) {
      records.push_back({{"chunk", r.chunk}, {"param", r.param}, {"tensor", r.tensor}, {"elems", r.elems},
                         {"span", span_json(r.span)}});
    }
    out.push_back({{"name", f.name}, {"shard_rank", f.shard_rank}, {"bytes", f.sum.bytes}, {"xxh3", hex(f.sum.xxh3)},
                   {"records", records}});
  }
  return out;
}

Result<std::vector<FileMeta>> files_from_json(const json& j) {
  try {
    std::vector<FileMeta> files;
    for (const json& f : j) {
      FileMeta fm{.name = f.at("name").get<std::string>(), .shard_rank = whole<int>(f.at("shard_rank")),
                  .sum = {.bytes = whole<std::uint64_t>(f.at("bytes")), .xxh3 = unhex(f.at("xxh3"))}};
      for (const json& r : f.at("records")) {
        fm.records.push_back({.chunk = whole<std::int64_t>(r.at("chunk")), .param = whole<std::int64_t>(r.at("param")),
                              .tensor = r.at("tensor").get<std::string>(), .elems = whole<std::uint64_t>(r.at("elems")),
                              .span = span_from(r.at("span"))});
      }
      files.push_back(std::move(fm));
    }
    return files;
  } catch (const std::exception& e) {
    return make_error(ErrorCode::kDataLoss, "malformed checkpoint file list: {}", e.what());
  }
}

json to_json(const CheckpointMeta& m) {
  json chunks = json::array(), params = json::array();
  for (const ChunkMeta& c : m.chunks) chunks.push_back({{"elems", c.elems}, {"shard_elems", c.shard_elems}, {"trains", c.trains}});
  for (const ParamMeta& p : m.params) {
    params.push_back({{"name", p.name}, {"shape", p.shape}, {"dtype", p.dtype}, {"trainable", p.trainable},
                      {"chunk", p.chunk}, {"offset", p.offset}, {"numel", p.numel}, {"steps", p.steps},
                      {"had_grad", p.had_grad}});
  }
  const engine::LossScaler::State& ls = m.loss_scaler;
  json out = {{"format", kFormatName},
              {"version", m.version},
              {"step", m.step},
              {"optimizer_steps", m.optimizer_steps},
              {"world", m.world},
              {"shard_world", m.shard_world},
              {"stage", m.stage},
              {"optimizer", {{"type", m.optimizer}, {"state_names", m.state_names}, {"lr", m.lr}}},
              {"compute_dtype", m.compute_dtype},
              {"loss_scaler", {{"scale", ls.scale}, {"iter", ls.iter}, {"last_overflow_iter", ls.last_overflow_iter},
                               {"hysteresis_left", ls.hysteresis_left}, {"skipped", ls.skipped}}},
              {"chunks", chunks},
              {"params", params},
              {"files", files_to_json(m.files)},
              {"config", m.config},
              {"client", m.client}};
  if (!m.lr_scales.empty()) out["optimizer"]["lr_scales"] = m.lr_scales;
  if (!m.weight_decays.empty()) out["optimizer"]["weight_decays"] = m.weight_decays;
  if (m.betas) out["optimizer"]["betas"] = *m.betas;
  if (m.momentum) out["optimizer"]["momentum"] = *m.momentum;
  if (m.buffers) {
    json buffers = json::array();
    for (const BufferMeta& b : *m.buffers) buffers.push_back({{"name", b.name}, {"shape", b.shape}, {"dtype", b.dtype}});
    out["buffers"] = std::move(buffers);
  }
  return out;
}

Result<CheckpointMeta> from_json(const json& j) {
  try {
    if (j.value("format", "") != kFormatName) return make_error(ErrorCode::kInvalidArgument, "not a strata checkpoint (format is not '{}')", kFormatName);
    CheckpointMeta m;
    m.version = whole<int>(j.at("version"));
    if (m.version != kFormatVersion) {
      return make_error(ErrorCode::kUnimplemented, "checkpoint format version {}; this strata reads version {}", m.version, kFormatVersion);
    }
    m.step = whole<std::int64_t>(j.at("step"));
    m.optimizer_steps = whole<std::int64_t>(j.at("optimizer_steps"));
    m.world = whole<int>(j.at("world"));
    m.shard_world = whole<int>(j.at("shard_world"));
    m.stage = whole<int>(j.at("stage"));
    const json& o = j.at("optimizer");
    m.optimizer = o.at("type").get<std::string>();
    m.state_names = o.at("state_names").get<std::vector<std::string>>();
    m.lr = o.at("lr").get<double>();
    if (o.contains("lr_scales")) m.lr_scales = o.at("lr_scales").get<std::vector<double>>();
    if (o.contains("weight_decays")) m.weight_decays = o.at("weight_decays").get<std::vector<double>>();
    if (o.contains("betas")) m.betas = o.at("betas").get<std::array<double, 2>>();
    if (o.contains("momentum")) m.momentum = o.at("momentum").get<double>();
    m.compute_dtype = j.at("compute_dtype").get<std::string>();
    const json& ls = j.at("loss_scaler");
    m.loss_scaler = {.scale = ls.at("scale").get<double>(), .iter = whole<std::int64_t>(ls.at("iter")),
                     .last_overflow_iter = whole<std::int64_t>(ls.at("last_overflow_iter")),
                     .hysteresis_left = whole<int>(ls.at("hysteresis_left")), .skipped = whole<std::uint64_t>(ls.at("skipped"))};
    for (const json& c : j.at("chunks")) {
      m.chunks.push_back({.elems = whole<std::int64_t>(c.at("elems")), .shard_elems = whole<std::int64_t>(c.at("shard_elems")),
                          .trains = c.at("trains").get<bool>()});
    }
    for (const json& p : j.at("params")) {
      m.params.push_back({.name = p.at("name").get<std::string>(), .shape = whole_list(p.at("shape")),
                          .dtype = p.at("dtype").get<std::string>(), .trainable = p.at("trainable").get<bool>(),
                          .chunk = whole<std::int64_t>(p.at("chunk")), .offset = whole<std::int64_t>(p.at("offset")),
                          .numel = whole<std::int64_t>(p.at("numel")), .steps = whole<std::int64_t>(p.at("steps")),
                          .had_grad = p.at("had_grad").get<bool>()});
    }
    if (j.contains("buffers")) {
      m.buffers.emplace();
      for (const json& b : j.at("buffers")) {
        m.buffers->push_back({.name = b.at("name").get<std::string>(), .shape = whole_list(b.at("shape")),
                              .dtype = b.at("dtype").get<std::string>()});
      }
    }
    STRATA_ASSIGN_OR_RETURN(m.files, files_from_json(j.at("files")));
    m.config = j.value("config", json::object());
    m.client = j.value("client", json::object());
    return m;
  } catch (const std::exception& e) {
    return make_error(ErrorCode::kDataLoss, "malformed checkpoint metadata: {}", e.what());
  }
}

Result<CheckpointMeta> read_meta(const std::filesystem::path& dir) {
  const std::filesystem::path path = dir / kMetaFile, sum_path = dir / kMetaSumFile;
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(ErrorCode::kNotFound, "no checkpoint here: cannot open {}", kMetaFile).with_path(path.string());
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ifstream sum_in(sum_path);
  std::string want;
  if (!(sum_in >> want)) return make_error(ErrorCode::kDataLoss, "the metadata's checksum file is missing or empty").with_path(sum_path.string());
  const std::uint64_t got = xxh3(std::as_bytes(std::span(text.data(), text.size())));
  if (hex(got) != want) {
    return make_error(ErrorCode::kDataLoss, "checksum mismatch: {} is {}, {} says {}", kMetaFile, hex(got), kMetaSumFile, want)
        .with_path(path.string());
  }
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return make_error(ErrorCode::kDataLoss, "{} is not valid JSON", kMetaFile).with_path(path.string());
  auto m = from_json(j);
  if (!m) return make_error(std::move(m).error().with_path(path.string()));
  return m;
}

std::string meta_checksum(std::string_view text) { return hex(xxh3(std::as_bytes(std::span(text.data(), text.size())))); }

}  // namespace strata::ckpt
