#include "launch_checks.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "strata/base/units.h"
#include "strata/nn/models/gpt_config.h"
#include "strata/plan/estimator.h"

namespace strata::cli {

std::uint64_t available_ram_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::uint64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return 0;
}

std::uint64_t current_rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

Status check_machine_fits(const TrainOptions& o) {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  if (static_cast<unsigned>(o.nproc) > cores) {
    fmt::print(stderr, "strata train: warning: {} ranks on {} cores: each rank gets one thread and they take turns, "
                       "so steps will be slow (and a collective may wait long on a rank that is not running)\n",
               o.nproc, cores);
  }
  const std::uint64_t available = available_ram_bytes();
  if (available == 0) return ok();
  STRATA_ASSIGN_OR_RETURN(nn::GPTConfig m, nn::gpt_config(o.model, 256, 0));
  // The module with the most parameters of its own: an MLP's 4h x h weight, or an
  // embedding table.
  const auto largest = static_cast<std::uint64_t>(std::max({4 * m.hidden * m.hidden, m.vocab * m.hidden, m.context * m.hidden}));
  STRATA_ASSIGN_OR_RETURN(plan::EstimateInput in, plan::EstimateInput::from_config(
                                                      o.config, static_cast<std::uint64_t>(m.parameter_count()), largest, o.nproc));
  STRATA_ASSIGN_OR_RETURN(plan::MemoryEstimate e, plan::estimate_memory(in));
  const std::uint64_t runtime = current_rss_bytes();
  // On a GPU the compute tier is its memory, not RAM.
  const std::uint64_t state = (o.compute == c10::DeviceType::CPU ? e.tier_total(plan::Tier::kCompute) : 0) +
                              e.tier_total(plan::Tier::kHost);
  const std::uint64_t need = static_cast<std::uint64_t>(o.nproc) * (runtime + state);
  if (need <= available) return ok();
  return make_error(ErrorCode::kResourceExhausted,
                    "{} ranks need about {} of RAM ({} each: {} for the runtime, as this process holds now, and {} of "
                    "model state in RAM, strata's estimate of its host tier and, on a CPU, its compute tier), but {} "
                    "is available; use fewer ranks (-n), offload to nvme (--offload-param nvme --offload-optimizer nvme), or a smaller model",
                    o.nproc, format_bytes(need), format_bytes(runtime + state), format_bytes(runtime),
                    format_bytes(state), format_bytes(available));
}

}  // namespace strata::cli
