// The largest GPT that trains, found by trying: `strata bench zero3 --device cuda
// --largest` runs strata and FSDP2 on GPTs of one width and a growing or shrinking
// number of layers, each attempt a whole process that trains 3 steps or fails (out of
// host, disk or GPU memory), and reports the largest of each that trained.
//
//   auto found = search_largest(start, 6, [&](int layers) -> Result<bool> { ... });
//   // found->largest_fit: the most layers that trained (0: none did)
//
// Each attempt costs minutes at these sizes, so the search starts at a prediction from
// the memory each system needs per parameter (largest_start) and takes few steps.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "strata/base/status.h"

namespace strata::cli {

struct LargestSearch {
  int largest_fit = 0;    // most layers that trained; 0 when none did
  int smallest_miss = 0;  // fewest layers that did not; 0 when none failed
  std::vector<std::pair<int, bool>> probes;  // (layers, trained), in the order tried
};

// Starting at `start` layers: while attempts train, grows by a quarter (at least one
// layer); while they fail, shrinks by a fifth (at least one); then bisects between the
// largest fit and the smallest miss. At most max_attempts attempts; an error from
// `trains` (an attempt that could not start) ends the search with it.
Result<LargestSearch> search_largest(int start, int max_attempts, const std::function<Result<bool>(int layers)>& trains);

// "custom:<layers>x<hidden>x<heads>", a model name nn::gpt_config and the baseline script take.
std::string gpt_name(int layers, std::int64_t hidden, std::int64_t heads);
// The parameters of custom:<layers>x<hidden>x<heads> with strata's byte vocabulary
// (nn::GPTConfig::parameter_count).
std::uint64_t gpt_params(int layers, std::int64_t hidden, std::int64_t heads);
// The most layers whose parameters fit in `params` (at least 1).
int gpt_layers_for(std::uint64_t params, std::int64_t hidden, std::int64_t heads);

// What each system keeps per parameter, for the search's start and strata's split of
// optimizer state between host and nvme. strata (stage 3, bf16 compute, bf16 optimizer
// state, bf16 gradient shards kept on the GPU until the step): a chunk whose state is on
// host holds its fp32 master and bf16 m and v there (8 bytes; the parameter shard is
// cast from the master), a chunk whose state is on nvme holds its bf16 parameter shard on
// host (2 bytes) and 8 bytes on nvme. FSDP2 with CPUOffloadPolicy: fp32 parameters,
// gradients, m and v on host (16 bytes).
// The most parameters strata fits in `host` bytes of RAM and `disk` bytes of nvme.
std::uint64_t strata_capacity(std::uint64_t host, std::uint64_t disk);
// For a model of `params`: how many elements' state stays on host. All of it when it
// fits there; else the middle of the splits that fit both (each keeps some slack);
// else, when none does, as much as the RAM holds (the attempt will show).
std::uint64_t strata_state_in_cpu(std::uint64_t params, std::uint64_t host, std::uint64_t disk);
std::uint64_t fsdp2_capacity(std::uint64_t host);

// What an attempt may fill of what is free: RAM less max(8 GiB, 1/16) for what is not
// model state (the runtime, CUDA's host allocations, strata's staging pools: a few GiB
// at these sizes, docs/performance.md), disk less max(2 GiB, 1/50). A fixed reserve,
// not a fraction: on a machine of 128 GiB a fifth would leave 26 GB unused.
std::uint64_t usable_ram(std::uint64_t free_bytes);
std::uint64_t usable_disk(std::uint64_t free_bytes);

// argv, started through /bin/sh so that the process first raises its own OOM score to
// the most (an unprivileged process may raise it; its children inherit it). An attempt
// that runs the machine out of RAM is then what the kernel's OOM killer picks, not the
// bench that counts the attempts, nor another process of the machine.
std::vector<std::string> as_oom_victim(std::vector<std::string> argv);

}  // namespace strata::cli
