// The GPT training runs that `strata bench train` and `strata bench python` put side by
// side, each started as its user starts it and timed the same way: the median step time
// of the steps after the first two (the first records strata's trace), as tokens/s.
//
//   GptRun run{.model = "custom:16x512x8", .world = 2};
//   BenchDir dir("python");                                        // removed at scope exit
//   auto cpp = strata_train_tokens_per_s(run, 3, dir.path());     // strata train (C++ API)
//   auto py = gpt_script_tokens_per_s(run, {"--api", "fully_shard"}, "strata.fully_shard", dir.path());
//
// The script is scripts/torch_zero_baseline.py: the same GPT as nn::GPT in plain
// PyTorch, trained with DDP (+ ZeroRedundancyOptimizer) or through strata's Python API,
// at `world` ranks under strata's launcher.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "strata/base/status.h"

namespace CLI {
class App;
}

namespace strata::cli {

class BenchReport;

struct GptRun {
  std::string model = "custom:16x512x8";
  int world = 2;
  int steps = 8;  // per run; the first two are not timed
  std::int64_t seq = 128;
  std::int64_t batch = 4;  // sequences per rank per step
  bool fp32 = false;       // default bf16
};

// --model, --world, --steps, --seq, --batch and --fp32 on `cmd`, into `run`.
void add_gpt_run_options(CLI::App& cmd, GptRun& run);

// The run's shape in the report's config: model, world, tokens_per_step, compute_dtype, steps.
void set_run_config(BenchReport& report, const GptRun& run);

// A fresh temporary directory, removed with everything in it when this goes.
class BenchDir {
 public:
  explicit BenchDir(const std::string& bench);
  ~BenchDir();
  BenchDir(const BenchDir&) = delete;
  BenchDir& operator=(const BenchDir&) = delete;
  // Empty when it could not be made: check ok().
  bool ok() const { return !path_.empty(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// `strata train` (this executable) at `stage`, everything in compute memory and no
// persistent parameters; its output goes to stderr.
Result<double> strata_train_tokens_per_s(const GptRun& run, int stage, const std::filesystem::path& dir);

// The interpreter that runs scripts/torch_zero_baseline.py: $STRATA_PYTHON (another
// interpreter, e.g. the GPU machine's with a CUDA torch), else Debian's /usr/bin/python3.
std::string baseline_python();

// scripts/torch_zero_baseline.py with `mode_args` (e.g. {"--optimizer", "zero"} or
// {"--api", "initialize"}) at run.world ranks, with build/<preset>/python on PYTHONPATH;
// `what` names it in errors. Output of the ranks goes to stderr.
Result<double> gpt_script_tokens_per_s(const GptRun& run, const std::vector<std::string>& mode_args,
                                       const std::string& what, const std::filesystem::path& dir);

}  // namespace strata::cli
