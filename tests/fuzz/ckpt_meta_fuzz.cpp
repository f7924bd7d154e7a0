// libFuzzer target: the checkpoint metadata reader (strata train --resume, strata ckpt,
// the Python API's load). Its checksum file guards against torn writes, not against a
// file edited by hand or written by another tool, so the reader must refuse anything
// malformed with an error, never crash or throw.
//
// A document it accepts must read back the same from its own to_json().
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "strata/ckpt/meta.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  auto m = strata::ckpt::from_json(j);
  if (!m) return 0;
  const nlohmann::json normal = strata::ckpt::to_json(*m);
  auto again = strata::ckpt::from_json(normal);
  if (!again || strata::ckpt::to_json(*again) != normal) __builtin_trap();
  return 0;
}
