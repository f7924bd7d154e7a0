#include "config_auto.h"

#include <algorithm>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace strata::cli {
namespace {

void auto_paths(const nlohmann::json& doc, const std::string& prefix, std::vector<std::string>& out) {
  if (!doc.is_object()) return;
  for (const auto& [key, value] : doc.items()) {
    const std::string path = prefix.empty() ? key : prefix + "." + key;
    if (value.is_string() && value.get<std::string>() == "auto") out.push_back(path);
    else auto_paths(value, path, out);
  }
}

}  // namespace

std::vector<std::string> describe_auto(const std::string& path, const Config& cfg) {
  std::ifstream in(path);
  const auto doc = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false, /*ignore_comments=*/true);
  std::vector<std::string> autos, lines;
  auto_paths(doc, "", autos);
  const nlohmann::json normalized = cfg.to_json();
  const std::vector<ConfigKey> keys = config_keys();
  for (const auto& p : autos) {
    if (p == "strata.placement") continue;
    if (p == "train_batch_size" || p == "train_micro_batch_size_per_gpu" || p == "gradient_accumulation_steps") {
      lines.push_back(fmt::format("{} = {} (derived from the other batch keys and the world size)", p,
                                  normalized.value(p, nlohmann::json()).dump()));
      continue;
    }
    std::string canonical = p;
    for (const ConfigKey& k : keys)
      if (k.path == p && !k.alias_of.empty()) canonical = k.alias_of;
    std::string pointer = "/" + canonical;
    std::replace(pointer.begin(), pointer.end(), '.', '/');
    const nlohmann::json::json_pointer ptr(pointer);
    lines.push_back(normalized.contains(ptr) ? fmt::format("{} = {}", p, normalized[ptr].dump())
                                             : fmt::format("{}: not used by strata", p));
  }
  return lines;
}

}  // namespace strata::cli
