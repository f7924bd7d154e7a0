// strata bench python: the tokens/s of one plain-PyTorch GPT trained through strata's
// Python API (strata.fully_shard per block and the root; strata.initialize, every module
// with parameters a unit), next to the same model through the C++ API (strata train,
// nn::GPT: embeddings, blocks and head as units) and through plain PyTorch DDP over
// Gloo, measured in one run. Stage 3 with everything in compute memory and no
// persistent parameters on both strata sides, so the difference is the front end: the
// Python hooks and the per-unit calls into the engine. Each configuration runs
// `repeats` times, interleaved (the machines are noisy); the figure is the median.
#include <algorithm>
#include <map>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "bench_gpt_runs.h"
#include "bench_report.h"
#include "commands.h"

namespace strata::cli {
namespace {

struct PythonBenchOptions {
  GptRun run;
  int repeats = 3;
  bool json = false;
};

struct Contender {
  std::string key, label, note;
  std::vector<std::string> mode_args;  // empty: strata train (the C++ API)
};

int run(const PythonBenchOptions& o) {
  BenchDir dir("python");
  if (!dir.ok()) {
    fmt::print(stderr, "bench python: cannot make a temporary directory\n");
    return 1;
  }
  const std::vector<Contender> contenders = {
      {"ddp", "torch DDP tokens/s", "DistributedDataParallel + torch.optim.AdamW, gloo", {"--optimizer", "adamw"}},
      {"cpp", "C++ API tokens/s", "strata train (nn::GPT), stage 3", {}},
      {"fully_shard", "Python fully_shard tokens/s", "strata.fully_shard per block + root, strata.optim.AdamW",
       {"--api", "fully_shard"}},
      {"initialize", "Python initialize tokens/s", "strata.initialize, a unit per module with parameters",
       {"--api", "initialize"}},
  };
  std::map<std::string, std::vector<double>> tokens;
  for (int rep = 0; rep < o.repeats; ++rep) {
    for (const auto& c : contenders) {
      auto t = c.mode_args.empty() ? strata_train_tokens_per_s(o.run, 3, dir.path())
                                   : gpt_script_tokens_per_s(o.run, c.mode_args, c.label, dir.path());
      if (!t) {
        fmt::print(stderr, "bench python: {}\n", t.error());
        return 1;
      }
      fmt::print(stderr, "bench python: run {}/{}: {}: {:.0f} tokens/s\n", rep + 1, o.repeats, c.key, *t);
      tokens[c.key].push_back(*t);
    }
  }
  std::map<std::string, double> med;
  for (auto& [k, v] : tokens) med[k] = median(v);
  const GptRun& r = o.run;
  BenchReport report("python");
  set_run_config(report, r);
  report.set_config("repeats", o.repeats);
  report.add(contenders[0].label, med["ddp"], "tok/s", "", std::nullopt, contenders[0].note);
  report.add(contenders[1].label, med["cpp"], "tok/s", "torch DDP", med["ddp"], contenders[1].note);
  for (const auto* c : {&contenders[2], &contenders[3]}) {
    report.add(c->label, med[c->key], "tok/s", "C++ API", med["cpp"], c->note);
    report.add_ratio(fmt::format("python_{}_vs_cpp", c->key), med[c->key] / med["cpp"]);
    report.add_ratio(fmt::format("python_{}_vs_ddp", c->key), med[c->key] / med["ddp"]);
  }
  report.add_ratio("cpp_vs_ddp", med["cpp"] / med["ddp"]);
  report.print(o.json);
  return 0;
}

}  // namespace

void add_bench_python(CLI::App& bench, int* exit_code) {
  auto* cmd = bench.add_subcommand(
      "python", "tokens/s of a plain-PyTorch GPT through strata's Python API vs the C++ API vs torch DDP");
  auto o = std::make_shared<PythonBenchOptions>();
  add_gpt_run_options(*cmd, o->run);
  cmd->add_option("--repeats", o->repeats, "Runs of each configuration, interleaved; the median counts")
      ->check(CLI::Range(1, 100));
  cmd->add_flag("--json", o->json, "Print one JSON object");
  cmd->callback([o, exit_code] { *exit_code = run(*o); });
}

}  // namespace strata::cli
