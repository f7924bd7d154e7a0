// The config schema: one entry per JSON key, bound to a Config's members.
// Internal to src/base; config.cpp walks it to parse, validate and print.
#pragma once

#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "strata/base/config.h"

namespace strata::config_schema {

enum class Kind { kBool, kInt, kFloat, kString, kEnum, kFloatPair, kAny };

// What strata does with a key. Anything but kActive produces a warning when present.
enum class Support {
  kActive,          // read and acted on
  kNotImplemented,  // a DeepSpeed feature strata recognises but does not do yet
  kNoEffect,        // meaningless for strata (e.g. CUDA-only); accepted and ignored
};

struct Field {
  std::string path;  // dotted JSON path, e.g. "zero_optimization.offload_param.device"
  Kind kind = Kind::kAny;
  Support support = Support::kActive;
  std::string note;  // for warnings: what strata does instead
  std::string alias_of;  // DeepSpeed's other spelling of this key: reads into the same member
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  bool min_exclusive = false;
  std::vector<std::string> choices;  // kEnum: the canonical spellings
  // Sets the bound member from a JSON value; the error message has no path (the
  // caller prefixes it). Null for kAny.
  std::function<Status(const nlohmann::json&)> read;
  std::function<nlohmann::json()> write;
};

// The schema bound to `c`: reading a field writes into c, writing reads from c.
std::vector<Field> bind(Config& c);

}  // namespace strata::config_schema
