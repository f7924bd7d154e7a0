// `strata bench zero3 --device cuda --largest`: the largest GPT that strata and FSDP2
// (fully_shard with CPUOffloadPolicy) each train for 3 steps on this machine, with the
// parameters and the optimizer state off the GPU (search in largest_search.h).
//
// strata's attempt is `strata train` at stage 3, bf16 compute, parameter shards on host,
// optimizer state and gradient shards in bf16 (strata.optimizer_state_dtype,
// strata.gradient_shard_dtype: one micro-step, so the bf16 gradients lose nothing) on
// host for as many elements as 80% of the available RAM holds
// (strata.optimizer_max_in_cpu) and on nvme for the rest.
// FSDP2's is scripts/torch_zero_baseline.py --optimizer fsdp2 under $STRATA_PYTHON.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "strata/base/status.h"

namespace strata::cli {

class BenchReport;

struct LargestOptions {
  std::int64_t hidden = 4096;  // every model is custom:<layers>x<hidden>x<heads>
  std::int64_t heads = 32;
  std::int64_t seq = 512;
  std::int64_t batch = 1;
  int attempts = 4;            // per system
  std::string nvme_path;       // strata's nvme directory (default: under the bench's directory)
  // Testing the search without training: layers up to `simulate` train under strata,
  // up to simulate / 2 under FSDP2, and no process starts. 0: real attempts.
  int simulate = 0;
};

// Runs both searches and adds their figures to `report`: each system's largest model
// (parameters, layers), the probes, and strata's over FSDP2's.
Status add_largest_models(const LargestOptions& o, BenchReport& report, const std::filesystem::path& dir);

}  // namespace strata::cli
