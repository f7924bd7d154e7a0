// What each "auto" in a config file resolved to, for `strata config check` and strata
// train's start summary: "bf16.enabled = false", "train_batch_size: derived at launch ...".
#pragma once

#include <string>
#include <vector>

#include "strata/base/config.h"

namespace strata::cli {

// One line per "auto" key of the JSON file at `path` (none when it cannot be read),
// with its value in `cfg`; strata.placement's "auto" is a real choice and not listed.
std::vector<std::string> describe_auto(const std::string& path, const Config& cfg);

}  // namespace strata::cli
