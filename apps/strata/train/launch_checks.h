// What strata train checks about the machine before it starts any rank: that the ranks'
// memory fits, and whether they outnumber the cores.
#pragma once

#include <cstdint>

#include "strata/base/status.h"
#include "train_options.h"

namespace strata::cli {

// MemAvailable from /proc/meminfo: what can be used without swapping (0 if unknown).
std::uint64_t available_ram_bytes();

// The process's resident set now, from /proc/self/statm (0 if unreadable).
std::uint64_t current_rss_bytes();

// Warns on stderr when -n exceeds the cores (the ranks then take turns on them), and
// refuses, before launch, a run whose ranks would need more RAM than the machine has
// available: each rank as large as this process is now (LibTorch, the data) plus
// strata's estimate of its compute and host tiers (plan::estimate_memory). `o` must be
// resolved.
Status check_machine_fits(const TrainOptions& o);

}  // namespace strata::cli
