// libFuzzer target: the config reader (strata config check, strata train --config, the
// Python API's config dicts all go through Config::parse).
//
// Beyond "does not crash": a config the reader accepts must survive its own normal
// form, because checkpoints store to_json() and a resumed run reads it back.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "strata/base/config.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> warnings;  // collected, so the log stays quiet
  auto cfg = strata::Config::parse(text, "<fuzz>", &warnings);
  if (!cfg) return 0;
  const nlohmann::json normal = cfg->to_json();
  auto again = strata::Config::from_json(normal, &warnings);
  if (!again || again->to_json() != normal) __builtin_trap();
  return 0;
}
