// Partitioners: which rank owns what. Pure and deterministic, so every rank computes
// the same answer from the same inputs without talking to the others.
//
//   std::vector<plan::ParamInfo> params = {{.numel = 4096}, {.numel = 64, .trainable = false}};
//   STRATA_ASSIGN_OR_RETURN(auto p, plan::partition_greedy_in_order(params, /*world=*/4));
//   int owner = p.owner[0];                 // rank that steps param 0
//   double skew = p.imbalance;              // max load / mean load, >= 1
//
//   STRATA_ASSIGN_OR_RETURN(auto s, plan::split_flat(/*numel=*/10'000, /*world=*/4, /*align=*/64));
//   // s.shard_numel == 2560, s.padded_numel == 10240; rank r owns [r*2560, (r+1)*2560)
//
// Three strategies:
//  - greedy in parameter order (FairScale OSS): each parameter goes to the currently
//    least-loaded rank; a frozen parameter weighs 1, as in OSS, so it is owned somewhere
//    but does not skew the balance of trainable state.
//  - sorted greedy, largest first (torch ZeroRedundancyOptimizer): the same rule after a
//    stable sort by size, descending (Graham's LPT: max load <= (4/3 - 1/(3*world)) * OPT).
//  - flat even split of one contiguous buffer into `world` equal shards, with tail padding
//    (ZeRO-1/2/3 flat chunks). Load is the number of real (unpadded) elements per rank.
// Ties between equally loaded ranks go to the lowest rank.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "strata/base/status.h"

namespace strata::plan {

struct ParamInfo {
  std::uint64_t numel = 0;
  bool trainable = true;
};

struct Partition {
  std::vector<int> owner;                 // per parameter: the owning rank
  std::vector<std::uint64_t> load;        // per rank: weighted elements (frozen params weigh 1)
  std::uint64_t max_load = 0;
  double imbalance = 1.0;                 // max_load / (total / world); 1.0 when total is 0
};

Result<Partition> partition_greedy_in_order(std::span<const ParamInfo> params, int world);
Result<Partition> partition_sorted_greedy(std::span<const ParamInfo> params, int world);

struct FlatSplit {
  std::uint64_t numel = 0;          // real elements in the buffer
  std::uint64_t padded_numel = 0;   // numel rounded up to a multiple of lcm(world, align)
  std::uint64_t shard_numel = 0;    // padded_numel / world; rank r owns [r*shard, (r+1)*shard)
  std::uint64_t padding = 0;        // padded_numel - numel, all at the tail
  std::vector<std::uint64_t> load;  // per rank: real elements in its shard
  double imbalance = 1.0;           // max load / mean load
};

// align_elems >= 1; the padded size is a multiple of lcm(world, align_elems).
Result<FlatSplit> split_flat(std::uint64_t numel, int world, std::uint64_t align_elems = 1);

// lcm(world, align) with overflow checks, shared with chunk packing.
Result<std::uint64_t> alignment_elems(int world, std::uint64_t io_align_elems);

}  // namespace strata::plan
