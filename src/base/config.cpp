#include "strata/base/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <fmt/ranges.h>  // fmt::join (in format.h before fmt 11)
#include <nlohmann/json.hpp>

#include "config_schema.h"
#include "strata/base/log.h"

namespace strata {
namespace {

using nlohmann::json;
using config_schema::Field;
using config_schema::Kind;
using config_schema::Support;

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string parent_of(const std::string& path) {
  const auto dot = path.rfind('.');
  return dot == std::string::npos ? std::string() : path.substr(0, dot);
}
std::string leaf_of(const std::string& path) {
  const auto dot = path.rfind('.');
  return dot == std::string::npos ? path : path.substr(dot + 1);
}
std::string join(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

// Walks a JSON document against the bound schema, collecting every error (so one run
// of `strata config check` shows them all) and every warning.
class Reader {
 public:
  Reader(std::vector<Field>& fields, std::vector<std::string>& errors, std::vector<std::string>& warnings)
      : errors_(errors), warnings_(warnings) {
    for (Field& f : fields) {
      by_path_[f.path] = &f;
      // Every proper prefix of a path is a section that may hold an object.
      for (std::string p = parent_of(f.path); !p.empty(); p = parent_of(p)) sections_.insert(p);
    }
  }

  void read_object(const json& obj, const std::string& path) {
    if (!obj.is_object()) {
      errors_.push_back(fmt::format("{}: expected an object, got {}", path.empty() ? "<top level>" : path,
                                    obj.type_name()));
      return;
    }
    for (const auto& [key, value] : obj.items()) read_key(join(path, key), value);
  }

 private:
  void read_key(const std::string& path, const json& value) {
    if (auto it = by_path_.find(path); it != by_path_.end()) {
      read_field(*it->second, value);
    } else if (sections_.contains(path)) {
      read_object(value, path);
    } else {
      errors_.push_back(fmt::format("{}: unknown key{}", path, suggestion(path)));
    }
  }

  void read_field(const Field& f, const json& value) {
    if (f.support != Support::kActive) {
      warnings_.push_back(fmt::format("{}: {} by strata ({}); it has no effect", f.path,
                                      f.support == Support::kNotImplemented ? "recognised but not implemented"
                                                                            : "recognised but not used",
                                      f.note));
    }
    if (!f.read) return;
    // "auto", as DeepSpeed's integrations write it on any key: strata decides, which here
    // means its default; strata train's flags and the world size fill in the rest
    // (Config::resolve_batch). An enum with a real "auto" choice (strata.placement) takes it.
    const bool auto_choice = std::find(f.choices.begin(), f.choices.end(), "auto") != f.choices.end();
    if (value.is_string() && value.get<std::string>() == "auto" && !auto_choice) return;
    if (auto st = f.read(value); !st) errors_.push_back(fmt::format("{}: {}", f.path, st.error().message()));
  }

  // "; did you mean stage3_prefetch_bucket_size?" or "; valid keys here: a, b, c".
  std::string suggestion(const std::string& path) const {
    const std::string parent = parent_of(path), leaf = leaf_of(path);
    std::vector<std::string> siblings;
    for (const auto& [p, f] : by_path_)
      if (parent_of(p) == parent) siblings.push_back(leaf_of(p));
    for (const auto& s : sections_)
      if (parent_of(s) == parent) siblings.push_back(leaf_of(s));
    std::string best;
    std::size_t best_d = std::max<std::size_t>(2, leaf.size() / 3) + 1;
    for (const auto& s : siblings) {
      const std::size_t d = edit_distance(leaf, s);
      if (d < best_d) best_d = d, best = s;
    }
    if (!best.empty()) return fmt::format("; did you mean {}?", best);
    // The right key in the wrong section: "stage at top level" -> zero_optimization.stage.
    for (const auto& [p, f] : by_path_)
      if (leaf_of(p) == leaf && f->support == Support::kActive) return fmt::format("; did you mean {}?", p);
    std::sort(siblings.begin(), siblings.end());
    return fmt::format("; valid keys{}: {}", parent.empty() ? " at the top level" : " in " + parent,
                       fmt::join(siblings, ", "));
  }

  std::map<std::string, Field*> by_path_;
  std::set<std::string> sections_;
  std::vector<std::string>& errors_;
  std::vector<std::string>& warnings_;
};

// Parse errors report a byte offset; people want a line and column.
std::string line_col(std::string_view text, std::size_t byte) {
  std::size_t line = 1, col = 1;
  for (std::size_t i = 0; i < std::min(byte, text.size()); ++i) {
    if (text[i] == '\n') ++line, col = 1;
    else ++col;
  }
  return fmt::format("line {}, column {}", line, col);
}

// doc[section][key] where the config gives it a value of its own ("auto" is not one).
const json* given_value(const json& doc, const char* section, const char* key) {
  if (!doc.is_object() || !doc.contains(section) || !doc[section].is_object() || !doc[section].contains(key))
    return nullptr;
  const json& v = doc[section][key];
  return v.is_string() && v.get<std::string>() == "auto" ? nullptr : &v;
}

// DeepSpeed's bf16.bf16_optimizer_states keeps Adam's moments in bf16: strata's bf16
// optimizer state (Config::apply_bf16_optimizer_states). Beside a strata.optimizer_state_dtype
// that says fp32 in a bf16 config it is an error, not a silent choice of one; in a config
// that turns bf16 off it has no effect, as in DeepSpeed, and says so.
void check_bf16_optimizer_states(const json& doc, const Config& cfg, std::vector<std::string>& errors,
                                 std::vector<std::string>& warns) {
  if (!cfg.bf16.optimizer_states) return;
  if (const json* on = given_value(doc, "bf16", "enabled"); on != nullptr && *on == false) {
    warns.emplace_back("bf16.bf16_optimizer_states: applies to bf16 training (as in DeepSpeed); with "
                       "bf16.enabled false it has no effect");
    return;
  }
  const json* dtype = given_value(doc, "strata", "optimizer_state_dtype");
  if (cfg.bf16.enabled && dtype != nullptr && cfg.strata.optimizer_state_dtype == StateDtype::kFp32) {
    errors.push_back(fmt::format("bf16.bf16_optimizer_states: true asks for bf16 optimizer state and "
                                 "strata.optimizer_state_dtype {} for fp32: give one of them", dtype->dump()));
  }
}

// DeepSpeed's offload_optimizer.ratio below 1 (ZeRO-Offload++'s partial offload): with
// device cpu that share of the optimizer state goes to host and the rest stays on the
// compute device, stepped there. That is strata.offload_optim_frac with no offload
// device, so the config becomes that (to_json then says what runs, and reads back the
// same). A strata.offload_optim_frac given beside it that says otherwise is an error;
// nvme with a ratio is refused, as DeepSpeed refuses it (strata.optimizer_max_in_cpu
// keeps a share of nvme state in host memory instead).
void apply_offload_ratio(const json& doc, Config& cfg, std::vector<std::string>& errors) {
  OffloadOptimizerConfig& o = cfg.zero_optimization.offload_optimizer;
  if (o.ratio >= 1.0 || o.device == OffloadDevice::kNone || cfg.zero_optimization.stage == 0) return;  // validate()
  if (o.device == OffloadDevice::kNvme) {
    errors.push_back(fmt::format("zero_optimization.offload_optimizer.ratio: {:g} with device \"nvme\": a ratio "
                                 "splits the state between the compute device and host memory (device \"cpu\"); "
                                 "to keep part of nvme state in host memory use strata.optimizer_max_in_cpu",
                                 o.ratio));
    return;
  }
  if (given_value(doc, "strata", "offload_optim_frac") != nullptr && cfg.strata.offload_optim_frac != o.ratio) {
    errors.push_back(fmt::format("zero_optimization.offload_optimizer.ratio {:g} and strata.offload_optim_frac {:g} "
                                 "both set the share of optimizer state on host: give one of them",
                                 o.ratio, cfg.strata.offload_optim_frac));
    return;
  }
  cfg.strata.offload_optim_frac = o.ratio;
  o.device = OffloadDevice::kNone;
}

}  // namespace

std::string_view to_string(OptimizerType t) {
  switch (t) {
    case OptimizerType::kAdam: return "Adam";
    case OptimizerType::kAdamW: return "AdamW";
    case OptimizerType::kSGD: return "SGD";
    case OptimizerType::kAdagrad: return "Adagrad";
    case OptimizerType::kLion: return "Lion";
    case OptimizerType::kLamb: return "Lamb";
  }
  return "?";
}
std::string_view to_string(OffloadDevice d) {
  switch (d) {
    case OffloadDevice::kNone: return "none";
    case OffloadDevice::kCpu: return "cpu";
    case OffloadDevice::kNvme: return "nvme";
  }
  return "?";
}
std::string_view to_string(Placement p) { return p == Placement::kAuto ? "auto" : "static"; }

std::string_view to_string(SchedulerType t) {
  switch (t) {
    case SchedulerType::kNone: return "none";
    case SchedulerType::kWarmupLR: return "WarmupLR";
    case SchedulerType::kWarmupDecayLR: return "WarmupDecayLR";
    case SchedulerType::kWarmupCosineLR: return "WarmupCosineLR";
    case SchedulerType::kOneCycle: return "OneCycle";
    case SchedulerType::kLRRangeTest: return "LRRangeTest";
  }
  return "?";
}

OptimizerType OptimizerConfig::effective_type() const {
  return type == OptimizerType::kAdam && adam_w_mode ? OptimizerType::kAdamW : type;
}

int OptimizerConfig::state_tensors() const {
  switch (type) {
    case OptimizerType::kAdam:
    case OptimizerType::kAdamW: return amsgrad ? 3 : 2;
    case OptimizerType::kLamb: return 2;
    case OptimizerType::kSGD: return momentum != 0 ? 1 : 0;
    case OptimizerType::kAdagrad:
    case OptimizerType::kLion: return 1;
  }
  return 0;
}

Result<Config> Config::from_json(const json& given_doc, std::vector<std::string>* warnings) {
  Config cfg;
  std::vector<Field> fields = config_schema::bind(cfg);
  std::vector<std::string> errors, warns;
  // DeepSpeed's deprecated boolean form: "zero_optimization": true is stage 1, false stage 0.
  json legacy;
  const bool zero_bool = given_doc.is_object() && given_doc.contains("zero_optimization") &&
                         given_doc["zero_optimization"].is_boolean();
  if (zero_bool) {
    legacy = given_doc;
    const int stage = given_doc["zero_optimization"].get<bool>() ? 1 : 0;
    legacy["zero_optimization"] = json{{"stage", stage}};
    warns.push_back(fmt::format("zero_optimization: {} is DeepSpeed's deprecated form; read as {{\"stage\": {}}}",
                                given_doc["zero_optimization"].dump(), stage));
  }
  const json& doc = zero_bool ? legacy : given_doc;
  Reader(fields, errors, warns).read_object(doc, "");
  const auto given = [&doc](const char* key) {
    return doc.is_object() && doc.contains(key) && !(doc[key].is_string() && doc[key].get<std::string>() == "auto");
  };
  cfg.batch_given = {.train = given("train_batch_size"), .micro = given("train_micro_batch_size_per_gpu"),
                     .accum = given("gradient_accumulation_steps")};
  check_bf16_optimizer_states(doc, cfg, errors, warns);
  cfg.apply_bf16_optimizer_states();
  apply_offload_ratio(doc, cfg, errors);
  if (errors.empty()) {
    if (auto st = cfg.validate(); !st) errors.push_back(st.error().message());
  }
  if (!errors.empty()) {
    if (errors.size() == 1) return make_error(ErrorCode::kInvalidArgument, "{}", errors[0]);
    return make_error(ErrorCode::kInvalidArgument, "{} errors:\n  {}", errors.size(), fmt::join(errors, "\n  "));
  }
  for (auto& w : warns) {
    if (warnings != nullptr) warnings->push_back(std::move(w));
    else log::warn("config: {}", w);
  }
  return cfg;
}

Result<Config> Config::parse(std::string_view text, std::string_view origin, std::vector<std::string>* warnings) {
  // A key given twice in one object: JSON parsers keep the last silently, which hides
  // an edit gone wrong. DeepSpeed refuses it too.
  std::vector<std::set<std::string>> seen;
  std::vector<std::string> at;  // the key being read at each open object
  std::string duplicate;
  const json::parser_callback_t find_duplicates = [&](int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start: seen.emplace_back(), at.emplace_back(); break;
      case json::parse_event_t::object_end: seen.pop_back(), at.pop_back(); break;
      case json::parse_event_t::key: {
        at.back() = parsed.get<std::string>();
        if (!seen.back().insert(at.back()).second && duplicate.empty()) {
          std::vector<std::string> path;
          for (const auto& k : at)
            if (!k.empty()) path.push_back(k);
          duplicate = fmt::format("{}", fmt::join(path, "."));
        }
        break;
      }
      default: break;
    }
    return true;
  };
  json doc = json::parse(text, find_duplicates, /*allow_exceptions=*/false, /*ignore_comments=*/true);
  if (!duplicate.empty() && !doc.is_discarded()) {
    return make_error(ErrorCode::kInvalidArgument, "{}: given twice; JSON keeps only the last, so say it once", duplicate)
        .with_path(std::string(origin));
  }
  if (doc.is_discarded()) {
    // Parse again with exceptions only to learn where it broke.
    std::string where;
    try {
      json unused = json::parse(text, nullptr, true, true);
      (void)unused;
    } catch (const json::parse_error& e) {
      where = fmt::format(" at {}", line_col(text, e.byte > 0 ? e.byte - 1 : 0));
    } catch (const json::exception& e) {
      // Not only parse_error: a number too large for a double ("3e999") throws
      // out_of_range, which once escaped and aborted `strata config check` (found by
      // fuzz_config).
      where = fmt::format(": {}", e.what());
    }
    return make_error(ErrorCode::kInvalidArgument, "not valid JSON{}", where).with_path(std::string(origin));
  }
  auto cfg = from_json(doc, warnings);
  if (!cfg) return make_error(std::move(cfg).error().with_path(std::string(origin)));
  return cfg;
}

Result<Config> Config::load(const std::string& path, std::vector<std::string>* warnings) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(errno_error(errno, "cannot open config file").with_path(path));
  std::stringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), path, warnings);
}

json Config::to_json() const {
  Config copy = *this;
  json out = json::object();
  for (const Field& f : config_schema::bind(copy)) {
    if (!f.write) continue;
    json* node = &out;
    std::string rest = f.path;
    for (auto dot = rest.find('.'); dot != std::string::npos; dot = rest.find('.')) {
      node = &(*node)[rest.substr(0, dot)];
      rest = rest.substr(dot + 1);
    }
    (*node)[rest] = f.write();
  }
  return out;
}

std::vector<ConfigKey> config_keys() {
  Config defaults;
  std::vector<ConfigKey> out;
  for (const Field& f : config_schema::bind(defaults)) {
    ConfigKey k{.path = f.path, .note = f.note};
    switch (f.kind) {
      case Kind::kBool: k.type = "bool"; break;
      case Kind::kInt: k.type = "int"; break;
      case Kind::kFloat: k.type = "number"; break;
      case Kind::kString: k.type = "string"; break;
      case Kind::kEnum: k.type = fmt::format("one of: {}", fmt::join(f.choices, ", ")); break;
      case Kind::kFloatPair: k.type = "[number, number]"; break;
      case Kind::kAny: k.type = "any"; break;
    }
    if (f.write) k.default_value = f.write().dump();
    const bool lo = std::isfinite(f.min), hi = std::isfinite(f.max);
    if (lo && hi) k.range = fmt::format("{}{:g}..{:g}", f.min_exclusive ? "> " : "", f.min, f.max);
    else if (lo) k.range = fmt::format("{} {:g}", f.min_exclusive ? ">" : ">=", f.min);
    if (!f.alias_of.empty()) {
      k.alias_of = f.alias_of;
      k.note = "DeepSpeed's other name for " + f.alias_of;
    }
    switch (f.support) {
      case Support::kActive: k.status = "active"; break;
      case Support::kNotImplemented: k.status = "not implemented"; break;
      case Support::kNoEffect: k.status = "no effect"; break;
    }
    out.push_back(std::move(k));
  }
  return out;
}

std::string config_keys_markdown() {
  std::string out = "| key | type | default | range | status |\n|---|---|---|---|---|\n";
  for (const ConfigKey& k : config_keys()) {
    out += fmt::format("| `{}` | {} | {} | {} | {}{} |\n", k.path, k.type,
                       k.default_value.empty() ? "" : "`" + k.default_value + "`", k.range, k.status,
                       k.note.empty() ? "" : ": " + k.note);
  }
  return out;
}

Status Config::validate() const {
  std::vector<std::string> errs;
  if (fp16.enabled && bf16.enabled) errs.emplace_back("fp16.enabled and bf16.enabled: choose one");
  if (torch_autocast.enabled) {
    // DeepSpeed asserts the same: autocast runs over fp32 parameters, which a precision
    // section would have cast.
    if (fp16.enabled || bf16.enabled) {
      errs.push_back(fmt::format("torch_autocast.enabled and {}.enabled: choose one (autocast computes in bf16 over "
                                 "fp32 parameters; {}.enabled casts the parameters themselves)",
                                 bf16.enabled ? "bf16" : "fp16", bf16.enabled ? "bf16" : "fp16"));
    }
    if (torch_autocast.dtype == AutocastDtype::kFp16) {
      // Without a loss scale small fp16 gradients flush to zero and the run trains on
      // wrong numbers; strata scales the loss only for fp16 parameters (fp16.enabled).
      errs.emplace_back("torch_autocast.dtype float16: fp16 autocast needs loss scaling, which strata applies "
                        "with fp16.enabled only; use \"bfloat16\" (the default), or fp16.enabled");
    } else if (torch_autocast.dtype == AutocastDtype::kFp32) {
      errs.emplace_back("torch_autocast.dtype float32: the parameters are fp32 already, so autocast would change "
                        "nothing; use \"bfloat16\" (the default), or leave torch_autocast off");
    }
  }
  if (optimizer.type == OptimizerType::kLamb) {
    if (optimizer.eps <= 0) {
      // u = m / (sqrt(v) + eps) of an element that never had a gradient would be 0/0.
      errs.push_back(fmt::format("optimizer.params.eps: Lamb needs eps > 0, got {:g}", optimizer.eps));
    }
    if (optimizer.min_coeff > optimizer.max_coeff) {
      errs.push_back(fmt::format("optimizer.params.min_coeff {:g} is above max_coeff {:g}", optimizer.min_coeff,
                                 optimizer.max_coeff));
    }
  } else if (!optimizer.bias_correction) {
    // DeepSpeed's FusedAdam would step without it; strata's Adam corrects always, as
    // torch.optim does, so the run would not be the one asked for.
    errs.push_back(fmt::format("optimizer.params.bias_correction: false is taken by Lamb only; {} always corrects "
                               "its moments, as torch.optim does", to_string(optimizer.type)));
  }
  const auto& z = zero_optimization;
  auto check_nvme = [&](std::string_view section, OffloadDevice dev, const std::string& nvme_path) {
    if (dev == OffloadDevice::kNvme && nvme_path.empty())
      errs.push_back(fmt::format("zero_optimization.{}.nvme_path: required when device is \"nvme\"", section));
  };
  check_nvme("offload_optimizer", z.offload_optimizer.device, z.offload_optimizer.nvme_path);
  check_nvme("offload_param", z.offload_param.device, z.offload_param.nvme_path);
  if (z.offload_param.device != OffloadDevice::kNone && z.stage != 3) {
    errs.push_back(fmt::format("zero_optimization.offload_param: needs stage 3 (parameters are only sharded "
                               "and offloaded in stage 3), but stage is {}", z.stage));
  }
  if (z.offload_optimizer.device != OffloadDevice::kNone && z.stage == 0) {
    errs.emplace_back("zero_optimization.offload_optimizer: needs stage 1, 2 or 3");
  }
  if (strata.compute_budget != 0 && strata.compute_budget < 4096) {
    errs.push_back(fmt::format("strata.compute_budget: {} bytes is too small to hold anything; use 0 for no limit",
                               strata.compute_budget));
  }
  const SchedulerConfig& sc = scheduler;
  if (sc.type == SchedulerType::kOneCycle) {
    for (const auto& [key, v] : {std::pair{"cycle_min_lr", sc.cycle_min_lr}, std::pair{"cycle_max_lr", sc.cycle_max_lr}})
      if (v < 0) errs.push_back(fmt::format("scheduler.params.{}: required by OneCycle (a number >= 0)", key));
    if (sc.decay_lr_rate != 0 && sc.decay_step_size == 0)
      errs.emplace_back("scheduler.params.decay_step_size: must be > 0 when decay_lr_rate is set (OneCycle)");
  }
  if (sc.warmup_type != "log" && sc.warmup_type != "linear")
    errs.push_back(fmt::format("scheduler.params.warmup_type: \"{}\" is not one of: log, linear", sc.warmup_type));
  if (aio.block_size % 4096 != 0) {
    errs.push_back(fmt::format("aio.block_size: {} is not a multiple of 4096 (O_DIRECT alignment)", aio.block_size));
  }
  if (errs.empty()) return ok();
  return make_error(ErrorCode::kInvalidArgument, "{}", fmt::join(errs, "\n  "));
}

Status Config::resolve_batch(int world_size) {
  if (world_size < 1) return make_error(ErrorCode::kInvalidArgument, "world size must be >= 1, got {}", world_size);
  std::int64_t& train = train_batch_size;
  std::int64_t& micro = train_micro_batch_size_per_gpu;
  std::int64_t& accum = gradient_accumulation_steps;
  const BatchKeysGiven g = batch_given;
  const bool has_train = g.train && train > 0;
  if (has_train && g.micro && !g.accum) {
    accum = train / micro / world_size;
  } else if (has_train && g.accum && !g.micro) {
    micro = train / world_size / accum;
  } else if (has_train && !g.micro && !g.accum) {
    accum = 1;
    micro = train / world_size;
  } else if (!has_train) {
    train = micro * accum * world_size;
  }
  if (micro < 1 || accum < 1 || train != micro * accum * world_size) {
    return make_error(ErrorCode::kInvalidArgument,
                      "train_batch_size {} is not train_micro_batch_size_per_gpu {} * gradient_accumulation_steps {} "
                      "* world size {}{}; give values whose product matches, or leave one out (or \"auto\") to "
                      "derive it",
                      train, micro, accum, world_size,
                      micro < 1 || accum < 1 ? " (derived by integer division, as DeepSpeed does)" : "");
  }
  return ok();
}

}  // namespace strata
