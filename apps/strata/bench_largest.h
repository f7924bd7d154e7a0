// `strata bench zero3 --device cuda --largest`: the largest GPT that strata and FSDP2
// (fully_shard with CPUOffloadPolicy) each train for 3 steps on this machine, with the
// parameters and the optimizer state off the GPU (search in largest_search.h).
//
// strata's attempt is `strata train` at stage 3, bf16 compute, parameter shards on host,
// gradient shards in bf16 kept on the GPU until the step (strata.gradient_shard_dtype:
// one micro-step, so the bf16 gradients lose nothing; strata.gradient_shards_on_compute),
// optimizer state in bf16 (strata.optimizer_state_dtype) split between host and nvme
// (strata.optimizer_max_in_cpu) by strata_state_in_cpu over the RAM and disk free when
// the attempt starts, less a reserve (usable_ram, usable_disk).
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
  // Layers of each system's first attempt; 0: where its bytes per parameter say the
  // machine is full. With attempts = 1, two chosen sizes (FSDP2 at F failing, strata
  // training 2F) bound the ratio from below in two attempts (add_largest_models).
  int strata_start = 0;
  int fsdp2_start = 0;
  std::string nvme_path;       // strata's nvme directory (default: under the bench's directory)
  // Testing the search without training: layers up to `simulate` train under strata,
  // up to simulate / 2 under FSDP2, and no process starts. 0: real attempts.
  int simulate = 0;
};

// Runs both searches, FSDP2's first, printing each attempt's outcome and time to stderr
// as it ends, and adds their figures to `report`: each system's largest model
// (parameters, layers, the probes), its smallest failure, strata's largest over FSDP2's
// when both trained one, and strata's largest over FSDP2's smallest failure (a lower
// bound on the ratio, since FSDP2's largest is below its smallest failure).
Status add_largest_models(const LargestOptions& o, BenchReport& report, const std::filesystem::path& dir);

}  // namespace strata::cli
