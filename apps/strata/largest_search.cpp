#include "largest_search.h"

#include <algorithm>

#include <fmt/format.h>

#include "strata/nn/models/gpt_config.h"

namespace strata::cli {

Result<LargestSearch> search_largest(int start, int max_attempts,
                                     const std::function<Result<bool>(int layers)>& trains) {
  LargestSearch s;
  int attempts = 0;
  auto probe = [&](int layers) -> Result<bool> {
    ++attempts;
    STRATA_ASSIGN_OR_RETURN(bool ok, trains(layers));
    s.probes.emplace_back(layers, ok);
    if (ok) s.largest_fit = std::max(s.largest_fit, layers);
    else s.smallest_miss = s.smallest_miss == 0 ? layers : std::min(s.smallest_miss, layers);
    return ok;
  };
  // Bracket: grow while it trains, shrink while it does not.
  for (int layers = std::max(1, start); attempts < max_attempts && (s.largest_fit == 0 || s.smallest_miss == 0);) {
    STRATA_ASSIGN_OR_RETURN(bool ok, probe(layers));
    if (!ok && layers == 1) break;  // nothing trains
    layers = ok ? std::max(layers + 1, layers + layers / 4) : std::max(1, std::min(layers - 1, layers - layers / 5));
  }
  // Bisect between them.
  while (attempts < max_attempts && s.largest_fit > 0 && s.smallest_miss > s.largest_fit + 1) {
    STRATA_RETURN_IF_ERROR(probe((s.largest_fit + s.smallest_miss) / 2));
  }
  return s;
}

std::string gpt_name(int layers, std::int64_t hidden, std::int64_t heads) {
  return fmt::format("custom:{}x{}x{}", layers, hidden, heads);
}

std::uint64_t gpt_params(int layers, std::int64_t hidden, std::int64_t heads) {
  auto cfg = nn::gpt_config(gpt_name(layers, hidden, heads), 256, 0);
  return cfg ? static_cast<std::uint64_t>(cfg->parameter_count()) : 0;
}

int gpt_layers_for(std::uint64_t params, std::int64_t hidden, std::int64_t heads) {
  const std::uint64_t one = gpt_params(1, hidden, heads), per_layer = gpt_params(2, hidden, heads) - one;
  return params <= one ? 1 : 1 + static_cast<int>((params - one) / per_layer);
}

// RAM first: h elements' state on host (kHostStateBytes each) and the rest's parameter
// shards (kShardBytes each) fill it, the rest's state goes to nvme (kNvmeStateBytes each):
//   8 h + 2 (N - h) <= host  and  8 (N - h) <= disk
// so N <= (host + 0.75 disk) / 8 when both are full.
constexpr std::uint64_t kHostStateBytes = 8, kShardBytes = 2, kNvmeStateBytes = 8;

std::uint64_t strata_capacity(std::uint64_t host, std::uint64_t disk) {
  const std::uint64_t ram_only = host / kHostStateBytes;
  const std::uint64_t on_nvme = disk / kNvmeStateBytes;
  if (kShardBytes * on_nvme >= host) return host / kShardBytes;
  return std::max(ram_only, on_nvme + (host - kShardBytes * on_nvme) / kHostStateBytes);
}

std::uint64_t strata_state_in_cpu(std::uint64_t params, std::uint64_t host, std::uint64_t disk) {
  if (kHostStateBytes * params <= host) return params;
  if (kShardBytes * params >= host) return 0;
  // h fits the RAM up to `most` and the disk from `least`.
  const std::uint64_t most = (host - kShardBytes * params) / (kHostStateBytes - kShardBytes);
  const std::uint64_t on_disk = disk / kNvmeStateBytes;
  const std::uint64_t least = params > on_disk ? params - on_disk : 0;
  return least <= most ? least + (most - least) / 2 : most;
}

std::uint64_t fsdp2_capacity(std::uint64_t host) { return host / 16; }

std::uint64_t usable_ram(std::uint64_t free_bytes) {
  const std::uint64_t reserve = std::max<std::uint64_t>(std::uint64_t{8} << 30, free_bytes / 16);
  return free_bytes > reserve ? free_bytes - reserve : 0;
}

std::uint64_t usable_disk(std::uint64_t free_bytes) {
  const std::uint64_t reserve = std::max<std::uint64_t>(std::uint64_t{2} << 30, free_bytes / 50);
  return free_bytes > reserve ? free_bytes - reserve : 0;
}

std::vector<std::string> as_oom_victim(std::vector<std::string> argv) {
  // "$0" "$@": the program and its arguments, unsplit.
  argv.insert(argv.begin(), {"/bin/sh", "-c", "echo 1000 > /proc/self/oom_score_adj && exec \"$0\" \"$@\""});
  return argv;
}

}  // namespace strata::cli
