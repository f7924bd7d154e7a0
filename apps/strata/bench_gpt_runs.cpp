#include "bench_gpt_runs.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench_report.h"
#include "launcher.h"

namespace strata::cli {

namespace fs = std::filesystem;

void add_gpt_run_options(CLI::App& cmd, GptRun& r) {
  cmd.add_option("--model", r.model, "GPT size (tiny, gpt2, custom:LxHxA)");
  cmd.add_option("--world", r.world, "Ranks")->check(CLI::Range(1, 64));
  cmd.add_option("--steps", r.steps, "Steps per run; the first two are not timed")->check(CLI::Range(3, 100000));
  cmd.add_option("--seq", r.seq, "Sequence length")->check(CLI::Range(8, 8192));
  cmd.add_option("--batch", r.batch, "Sequences per rank per step")->check(CLI::Range(1, 1024));
  cmd.add_flag("--fp32", r.fp32, "Compute in fp32 (default bf16)");
}

void set_run_config(BenchReport& report, const GptRun& r) {
  report.set_config("model", r.model);
  report.set_config("world", r.world);
  report.set_config("tokens_per_step", r.world * r.batch * r.seq);
  report.set_config("compute_dtype", r.fp32 ? "fp32" : "bf16");
  report.set_config("steps", r.steps);
}

BenchDir::BenchDir(const std::string& bench) {
  std::string tmpl = (fs::temp_directory_path() / fmt::format("strata-bench-{}-XXXXXX", bench)).string();
  if (::mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
}

BenchDir::~BenchDir() {
  std::error_code ec;
  if (!path_.empty()) fs::remove_all(path_, ec);
}

Result<double> strata_train_tokens_per_s(const GptRun& r, int stage, const fs::path& dir) {
  STRATA_ASSIGN_OR_RETURN(std::string self, self_exe());
  const fs::path out = dir / fmt::format("stage{}", stage);
  // The settings of `strata bench zero3`: stage 3 keeps no persistent chunks.
  const fs::path config = dir / "config.json";
  std::ofstream(config) << R"({"zero_optimization": {"stage3_param_persistence_threshold": 0}})";
  std::vector<std::string> argv = {self, "train", "--config", config.string(), "-n", std::to_string(r.world), "--model", r.model,
                                   "--seq-len", std::to_string(r.seq), "--micro-batch", std::to_string(r.batch),
                                   "--steps", std::to_string(r.steps), "--stage", std::to_string(stage),
                                   "--compute-budget", "none", "--offload-optimizer", "none", "--sample-bytes", "0",
                                   "--eval-every", "0", "--eval-batches", "1", "--out", out.string(),
                                   r.fp32 ? "--fp32" : "--bf16"};
  if (stage == 3) argv.insert(argv.end(), {"--offload-param", "none"});
  // As a user starts it (no RANK in its environment: it starts its own ranks).
  STRATA_RETURN_IF_ERROR(run_as_user(argv, "1>&2", fmt::format("strata train at stage {}", stage)));
  std::ifstream in(out / "metrics.jsonl");
  std::vector<double> step_s;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j["step"].get<int>() > 2) step_s.push_back(j["step_s"].get<double>());
  }
  in.close();
  std::error_code ec;
  fs::remove_all(out, ec);  // strata train refuses to overwrite an earlier run's outputs
  if (step_s.empty()) return make_error(ErrorCode::kDataLoss, "stage {}: no timed steps in metrics.jsonl", stage);
  return static_cast<double>(r.world * r.batch * r.seq) / median(step_s);
}

std::string baseline_python() {
  const char* python = std::getenv("STRATA_PYTHON");
  return python != nullptr && *python != '\0' ? python : "/usr/bin/python3";
}

Result<double> gpt_script_tokens_per_s(const GptRun& r, const std::vector<std::string>& mode_args,
                                       const std::string& what, const fs::path& dir) {
  const fs::path out = dir / "script.json";
  std::error_code ec;
  fs::remove(out, ec);
  LaunchOptions lo;
  lo.nproc = r.world;
  lo.argv = {baseline_python(), std::string(STRATA_SOURCE_DIR) + "/scripts/torch_zero_baseline.py", "--model", r.model,
             "--seq", std::to_string(r.seq), "--batch", std::to_string(r.batch), "--steps",
             std::to_string(std::max(1, r.steps - 2)), "--warmup", "2", "--precision", r.fp32 ? "fp32" : "bf16",
             "--out", out.string()};
  lo.argv.insert(lo.argv.end(), mode_args.begin(), mode_args.end());
  std::string pythonpath = STRATA_PYTHON_DIR;
  if (const char* p = std::getenv("PYTHONPATH"); p != nullptr && *p != '\0') pythonpath += std::string(":") + p;
  lo.extra_env["PYTHONPATH"] = pythonpath;
  lo.output_fd = STDERR_FILENO;  // stdout is the report's
  STRATA_ASSIGN_OR_RETURN(int code, launch(lo));
  if (code != 0) return make_error(ErrorCode::kInternal, "{} failed with exit code {}", what, code);
  std::ifstream in(out);
  auto j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.contains("tokens_per_s")) return make_error(ErrorCode::kDataLoss, "{} wrote no figure", what);
  return j["tokens_per_s"].get<double>();
}

}  // namespace strata::cli
