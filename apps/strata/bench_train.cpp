// strata bench train: the main job's throughput at each ZeRO stage next to PyTorch's own
// ZeRO (DDP + ZeroRedundancyOptimizer, scripts/torch_zero_baseline.py) on the same GPT,
// world size, batch and precision, measured in one run.
//
// Each stage is a real `strata train` run (this executable, as a user starts it) with
// everything on compute and the settings of `strata bench zero3` (no persistent chunks);
// its figure is the median step time of the steps after the first two (the first
// records the trace), read from its metrics.jsonl. The baseline
// runs as `world` processes of /usr/bin/python3 under strata's launcher.
#include <unistd.h>

#include <cstdlib>

#include <filesystem>
#include <fstream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench_report.h"
#include "commands.h"
#include "launcher.h"

namespace strata::cli {
namespace {

namespace fs = std::filesystem;

struct TrainBenchOptions {
  std::string model = "custom:16x512x8";
  int world = 2;
  int steps = 8;
  std::int64_t seq = 128;
  std::int64_t batch = 4;
  std::vector<int> stages = {0, 1, 2, 3};
  bool fp32 = false;
  bool torch = true;
  bool json = false;
};

Result<double> strata_tokens_per_s(const TrainBenchOptions& o, int stage, const fs::path& dir) {
  STRATA_ASSIGN_OR_RETURN(std::string self, self_exe());
  const fs::path out = dir / fmt::format("stage{}", stage);
  // As a user starts it (no RANK in its environment: it starts its own ranks), its
  // output on stderr.
  // The settings of `strata bench zero3`: stage 3 keeps no persistent chunks.
  const fs::path config = dir / "config.json";
  std::ofstream(config) << R"({"zero_optimization": {"stage3_param_persistence_threshold": 0}})";
  std::vector<std::string> argv = {self, "train", "--config", config.string(), "-n", std::to_string(o.world), "--model", o.model,
                                   "--seq-len", std::to_string(o.seq), "--micro-batch", std::to_string(o.batch),
                                   "--steps", std::to_string(o.steps), "--stage", std::to_string(stage),
                                   "--compute-budget", "none", "--offload-optimizer", "none", "--sample-bytes", "0",
                                   "--eval-every", "0", "--eval-batches", "1", "--out", out.string(),
                                   o.fp32 ? "--fp32" : "--bf16"};
  if (stage == 3) argv.insert(argv.end(), {"--offload-param", "none"});
  STRATA_RETURN_IF_ERROR(run_as_user(argv, "1>&2", fmt::format("strata train at stage {}", stage)));
  std::ifstream in(out / "metrics.jsonl");
  std::vector<double> step_s;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j["step"].get<int>() > 2) step_s.push_back(j["step_s"].get<double>());
  }
  if (step_s.empty()) return make_error(ErrorCode::kDataLoss, "stage {}: no timed steps in metrics.jsonl", stage);
  return static_cast<double>(o.world * o.batch * o.seq) / median(step_s);
}

Result<double> torch_tokens_per_s(const TrainBenchOptions& o, const fs::path& dir) {
  const fs::path out = dir / "torch.json";
  LaunchOptions lo;
  lo.nproc = o.world;
  lo.argv = {"/usr/bin/python3", std::string(STRATA_SOURCE_DIR) + "/scripts/torch_zero_baseline.py", "--model", o.model,
             "--seq", std::to_string(o.seq), "--batch", std::to_string(o.batch), "--steps",
             std::to_string(std::max(1, o.steps - 2)), "--warmup", "2", "--precision", o.fp32 ? "fp32" : "bf16",
             "--optimizer", "zero", "--out", out.string()};
  lo.output_fd = STDERR_FILENO;  // stdout is the report's
  STRATA_ASSIGN_OR_RETURN(int code, launch(lo));
  if (code != 0) return make_error(ErrorCode::kInternal, "the PyTorch baseline failed with exit code {}", code);
  std::ifstream in(out);
  auto j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.contains("tokens_per_s")) return make_error(ErrorCode::kDataLoss, "the PyTorch baseline wrote no figure");
  return j["tokens_per_s"].get<double>();
}

int run(const TrainBenchOptions& o) {
  std::string tmpl = (fs::temp_directory_path() / "strata-bench-train-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    fmt::print(stderr, "bench train: cannot make a temporary directory\n");
    return 1;
  }
  const fs::path dir = tmpl;
  auto fail = [&dir](const Error& e) {
    fmt::print(stderr, "bench train: {}\n", e);
    std::error_code ec;
    fs::remove_all(dir, ec);
    return 1;
  };
  std::optional<double> base;
  if (o.torch) {
    auto t = torch_tokens_per_s(o, dir);
    if (!t) return fail(t.error());
    base = *t;
  }
  BenchReport report("train");
  report.set_config("model", o.model);
  report.set_config("world", o.world);
  report.set_config("tokens_per_step", o.world * o.batch * o.seq);
  report.set_config("compute_dtype", o.fp32 ? "fp32" : "bf16");
  report.set_config("steps", o.steps);
  if (base) report.add("torch DDP+ZeRO tokens/s", *base, "tok/s", "", std::nullopt, "ZeroRedundancyOptimizer(AdamW), gloo");
  for (int stage : o.stages) {
    auto t = strata_tokens_per_s(o, stage, dir);
    if (!t) return fail(t.error());
    fmt::print(stderr, "bench train: stage {}: {:.0f} tokens/s\n", stage, *t);
    report.add(fmt::format("stage{} tokens/s", stage), *t, "tok/s", base ? "torch DDP+ZeRO" : "", base,
               "strata train, everything on compute");
    if (base) report.add_ratio(fmt::format("stage{}_tokens_vs_torch_zero", stage), *t / *base);
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  report.print(o.json);
  return 0;
}

}  // namespace

void add_bench_train(CLI::App& bench, int* exit_code) {
  auto* cmd = bench.add_subcommand("train", "strata train's tokens/s per stage vs PyTorch DDP + ZeroRedundancyOptimizer");
  auto o = std::make_shared<TrainBenchOptions>();
  cmd->add_option("--model", o->model, "GPT size (tiny, gpt2, custom:LxHxA)");
  cmd->add_option("--world", o->world, "Ranks")->check(CLI::Range(1, 64));
  cmd->add_option("--steps", o->steps, "Steps per run; the first two are not timed")->check(CLI::Range(3, 100000));
  cmd->add_option("--seq", o->seq, "Sequence length")->check(CLI::Range(8, 8192));
  cmd->add_option("--batch", o->batch, "Sequences per rank per step")->check(CLI::Range(1, 1024));
  cmd->add_option("--stages", o->stages, "Stages to run")->check(CLI::Range(0, 3))->delimiter(',');
  cmd->add_flag("--fp32", o->fp32, "Compute in fp32 (default bf16)");
  cmd->add_flag("!--no-torch", o->torch, "Skip the PyTorch baseline");
  cmd->add_flag("--json", o->json, "Print one JSON object");
  cmd->callback([o, exit_code] { *exit_code = run(*o); });
}

}  // namespace strata::cli
