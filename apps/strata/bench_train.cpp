// strata bench train: the main job's throughput at each ZeRO stage next to PyTorch's own
// ZeRO (DDP + ZeroRedundancyOptimizer, scripts/torch_zero_baseline.py) on the same GPT,
// world size, batch and precision, measured in one run.
//
// Each stage is a real `strata train` run (this executable, as a user starts it) with
// everything on compute and the settings of `strata bench zero3` (no persistent chunks);
// its figure is the median step time of the steps after the first two (the first
// records the trace), read from its metrics.jsonl. The baseline
// runs as `world` processes of /usr/bin/python3 under strata's launcher.
#include <optional>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "bench_gpt_runs.h"
#include "bench_report.h"
#include "commands.h"

namespace strata::cli {
namespace {

struct TrainBenchOptions {
  GptRun run;
  std::vector<int> stages = {0, 1, 2, 3};
  bool torch = true;
  bool json = false;
};

int run(const TrainBenchOptions& o) {
  BenchDir dir("train");
  if (!dir.ok()) {
    fmt::print(stderr, "bench train: cannot make a temporary directory\n");
    return 1;
  }
  auto fail = [](const Error& e) {
    fmt::print(stderr, "bench train: {}\n", e);
    return 1;
  };
  const GptRun& r = o.run;
  std::optional<double> base;
  if (o.torch) {
    auto t = gpt_script_tokens_per_s(r, {"--optimizer", "zero"}, "the PyTorch baseline", dir.path());
    if (!t) return fail(t.error());
    base = *t;
  }
  BenchReport report("train");
  set_run_config(report, r);
  if (base) report.add("torch DDP+ZeRO tokens/s", *base, "tok/s", "", std::nullopt, "ZeroRedundancyOptimizer(AdamW), gloo");
  for (int stage : o.stages) {
    auto t = strata_train_tokens_per_s(r, stage, dir.path());
    if (!t) return fail(t.error());
    fmt::print(stderr, "bench train: stage {}: {:.0f} tokens/s\n", stage, *t);
    report.add(fmt::format("stage{} tokens/s", stage), *t, "tok/s", base ? "torch DDP+ZeRO" : "", base,
               "strata train, everything on compute");
    if (base) report.add_ratio(fmt::format("stage{}_tokens_vs_torch_zero", stage), *t / *base);
  }
  report.print(o.json);
  return 0;
}

}  // namespace

void add_bench_train(CLI::App& bench, int* exit_code) {
  auto* cmd = bench.add_subcommand("train", "strata train's tokens/s per stage vs PyTorch DDP + ZeroRedundancyOptimizer");
  auto o = std::make_shared<TrainBenchOptions>();
  add_gpt_run_options(*cmd, o->run);
  cmd->add_option("--stages", o->stages, "Stages to run")->check(CLI::Range(0, 3))->delimiter(',');
  cmd->add_flag("!--no-torch", o->torch, "Skip the PyTorch baseline");
  cmd->add_flag("--json", o->json, "Print one JSON object");
  cmd->callback([o, exit_code] { *exit_code = run(*o); });
}

}  // namespace strata::cli
