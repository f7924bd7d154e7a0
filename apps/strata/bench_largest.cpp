#include "bench_largest.h"

#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "bench_gpt_runs.h"
#include "bench_report.h"
#include "largest_search.h"
#include "launcher.h"
#include "train/launch_checks.h"

namespace strata::cli {
namespace fs = std::filesystem;
namespace {

std::string model_name(int layers, const LargestOptions& o) { return gpt_name(layers, o.hidden, o.heads); }

Result<bool> strata_trains(int layers, const LargestOptions& o, const fs::path& dir, const fs::path& nvme) {
  STRATA_ASSIGN_OR_RETURN(std::string self, self_exe());
  const std::uint64_t params = gpt_params(layers, o.hidden, o.heads);
  std::error_code ec;
  fs::remove_all(nvme, ec);  // what an earlier attempt left is not free for this one
  fs::create_directories(nvme, ec);
  const std::uint64_t host = usable_ram(available_ram_bytes());
  const std::uint64_t disk = usable_disk(fs::space(nvme, ec).available);
  const fs::path config = dir / fmt::format("strata-{}.json", layers);
  const nlohmann::json cfg = {
      {"zero_optimization", {{"stage3_param_persistence_threshold", 0}}},
      {"strata", {{"optimizer_state_dtype", "bf16"}, {"gradient_shard_dtype", "bf16"}, {"gradient_shards_on_compute", true},
                  {"optimizer_max_in_cpu", strata_state_in_cpu(params, host, disk)}}}};
  std::ofstream(config) << cfg.dump();
  const fs::path out = dir / fmt::format("strata-{}", layers);
  // Data: the source tree's docs (the GPU machine has no fortunes corpus).
  const std::vector<std::string> argv = {
      self, "train", "--config", config.string(), "-n", "1", "--device", "cuda", "--model", model_name(layers, o),
      "--data", std::string(STRATA_SOURCE_DIR) + "/docs", "--seq-len", std::to_string(o.seq), "--micro-batch",
      std::to_string(o.batch), "--steps", "3", "--warmup", "1", "--stage", "3", "--offload-param", "cpu",
      "--offload-optimizer", "nvme", "--nvme-path", nvme.string(), "--bf16", "--sample-bytes", "0",
      "--eval-batches", "0", "--no-save", "--out", out.string()};
  const Status st = run_as_user(as_oom_victim(argv), "1>&2", "strata train");
  fs::remove_all(out, ec);
  fs::remove_all(nvme, ec);
  return st.has_value();
}

Result<bool> fsdp2_trains(int layers, const LargestOptions& o, const fs::path& dir) {
  LaunchOptions lo;
  lo.argv = as_oom_victim({baseline_python(), std::string(STRATA_SOURCE_DIR) + "/scripts/torch_zero_baseline.py",
                           "--device", "cuda", "--optimizer", "fsdp2", "--model", model_name(layers, o), "--seq",
                           std::to_string(o.seq), "--batch", std::to_string(o.batch), "--steps", "1", "--warmup", "2",
                           "--precision", "bf16", "--out", (dir / "fsdp2.json").string()});
  lo.output_fd = STDERR_FILENO;  // stdout is the report's
  STRATA_ASSIGN_OR_RETURN(int code, launch(lo));
  return code == 0;
}

void add_system(BenchReport& report, const std::string& name, const LargestSearch& s, const LargestOptions& o,
                const std::string& baseline, std::uint64_t baseline_params) {
  std::vector<std::string> probes;
  for (const auto& [layers, ok] : s.probes) probes.push_back(fmt::format("{}{}", layers, ok ? "" : "x"));
  const auto params = s.largest_fit > 0 ? gpt_params(s.largest_fit, o.hidden, o.heads) : 0;
  report.add(name + " largest model", static_cast<double>(params) / 1e9, "B params", baseline,
             baseline.empty() || baseline_params == 0 ? std::nullopt
                                                      : std::optional<double>(static_cast<double>(baseline_params) / 1e9),
             fmt::format("{} layers of {}x{} trained 3 steps; tried {} (x: did not)", s.largest_fit, o.hidden, o.heads,
                         fmt::join(probes, ", ")));
  if (s.smallest_miss > 0) {
    report.add(name + " smallest failure", static_cast<double>(gpt_params(s.smallest_miss, o.hidden, o.heads)) / 1e9,
               "B params", "", std::nullopt,
               fmt::format("{} layers of {}x{}: the fewest that did not train", s.smallest_miss, o.hidden, o.heads));
  }
}

// One attempt's outcome as it ends: a search takes minutes per attempt, and a run cut
// short by its time limit still leaves what it found in the log.
std::function<Result<bool>(int)> reported(const char* system, const LargestOptions& o,
                                          std::function<Result<bool>(int)> trains) {
  return [system, &o, trains = std::move(trains)](int layers) -> Result<bool> {
    const auto t0 = std::chrono::steady_clock::now();
    Result<bool> r = trains(layers);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print(stderr, "bench zero3 --largest: {} at {} layers ({:.2f}B parameters): {} ({:.0f} s)\n", system, layers,
               static_cast<double>(gpt_params(layers, o.hidden, o.heads)) / 1e9,
               !r ? "could not start" : *r ? "trained 3 steps" : "did not train", s);
    return r;
  };
}

}  // namespace

Status add_largest_models(const LargestOptions& o, BenchReport& report, const fs::path& dir) {
  const fs::path nvme = o.nvme_path.empty() ? dir / "nvme" : fs::path(o.nvme_path) / "strata-bench-largest";
  std::error_code ec;
  fs::create_directories(nvme.parent_path(), ec);
  const std::uint64_t host = usable_ram(available_ram_bytes());
  const std::uint64_t disk = usable_disk(fs::space(nvme.parent_path(), ec).available);
  // Start where each system's bytes per parameter say it fills the machine, unless told.
  auto start = [&](int given, std::uint64_t capacity) {
    if (given > 0) return given;
    return o.simulate > 0 ? 1 : gpt_layers_for(capacity, o.hidden, o.heads);
  };
  const int strata_start = start(o.strata_start, strata_capacity(host, disk));
  const int fsdp2_start = start(o.fsdp2_start, fsdp2_capacity(host));
  fmt::print(stderr, "bench zero3 --largest: {:.1f} GiB of RAM and {:.1f} GiB of disk usable; starting at {} layers "
                     "(strata) and {} (FSDP2), at most {} attempts each\n",
             static_cast<double>(host) / (1 << 30), static_cast<double>(disk) / (1 << 30), strata_start, fsdp2_start,
             o.attempts);
  STRATA_ASSIGN_OR_RETURN(LargestSearch fsdp2,
                          search_largest(fsdp2_start, o.attempts, reported("FSDP2", o, [&](int layers) -> Result<bool> {
                            if (o.simulate > 0) return layers <= o.simulate / 2;
                            return fsdp2_trains(layers, o, dir);
                          })));
  STRATA_ASSIGN_OR_RETURN(LargestSearch strata,
                          search_largest(strata_start, o.attempts, reported("strata", o, [&](int layers) -> Result<bool> {
                            if (o.simulate > 0) return layers <= o.simulate;
                            return strata_trains(layers, o, dir, nvme);
                          })));
  auto params_of = [&](int layers) { return layers > 0 ? gpt_params(layers, o.hidden, o.heads) : std::uint64_t{0}; };
  add_system(report, "fsdp2_cpu_offload", fsdp2, o, "", 0);
  add_system(report, "strata_offload", strata, o, "fsdp2_cpu_offload", params_of(fsdp2.largest_fit));
  report.add_figure("largest_usable_ram_bytes", static_cast<double>(host));
  report.add_figure("largest_usable_disk_bytes", static_cast<double>(disk));
  if (fsdp2.largest_fit > 0) {
    report.add_ratio("strata_largest_vs_fsdp2",
                     static_cast<double>(params_of(strata.largest_fit)) / static_cast<double>(params_of(fsdp2.largest_fit)));
  }
  if (fsdp2.smallest_miss > 0) {
    report.add_ratio("strata_largest_vs_fsdp2_smallest_failure", static_cast<double>(params_of(strata.largest_fit)) /
                                                                     static_cast<double>(params_of(fsdp2.smallest_miss)));
  }
  return ok();
}

}  // namespace strata::cli
