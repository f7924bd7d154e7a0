// strata bench zero: optimizer-state bytes, gradient bytes and step time per rank for
// stage 0 (unsharded data parallel), stage 1 and stage 2, measured in one run of N ranks.
//
// The command starts the ranks itself (through the launcher) as `strata bench zero
// --worker DIR`; each rank runs the three stages one after the other on the same model
// shape and writes its figures to DIR/rank<k>.json, which the parent prints.
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include "bench_report.h"
#include "commands.h"
#include "launcher.h"
#include "strata/base/units.h"
#include "strata/comm/rendezvous.h"
#include "strata/engine/engine.h"

namespace strata::cli {
namespace {

struct ZeroBenchOptions {
  std::string params = "100M";
  int world = 2;
  int steps = 5;
  std::int64_t hidden = 2048;
  std::int64_t batch = 8;
  std::string reduce_bucket = "25M";  // elements of gradient buffers alive at once (stage 2)
  bool json = false;
  std::string worker_dir;  // set in the ranks
};

// A stack of hidden x hidden Linear layers sized to the requested parameter count.
struct Mlp : torch::nn::Module {
  std::vector<at::Tensor> weights, biases;
  Mlp(std::int64_t hidden, std::int64_t layers) {
    for (std::int64_t l = 0; l < layers; ++l) {
      weights.push_back(register_parameter(fmt::format("w{}", l), at::randn({hidden, hidden}) * 0.02));
      biases.push_back(register_parameter(fmt::format("b{}", l), at::zeros({hidden})));
    }
  }
  at::Tensor forward(at::Tensor x) {
    for (std::size_t l = 0; l < weights.size(); ++l) x = at::tanh(at::linear(x, weights[l], biases[l]));
    return x;
  }
};

int run_worker(const ZeroBenchOptions& o) {
  auto comm = comm::init_from_env();
  if (!comm) {
    fmt::print(stderr, "bench zero: {}\n", comm.error());
    return 1;
  }
  const auto target = parse_size(o.params);
  const auto bucket = parse_size(o.reduce_bucket);
  if (!target || !bucket || *bucket == 0) {
    fmt::print(stderr, "bench zero: --params and --reduce-bucket must be positive sizes\n");
    return 1;
  }
  const double per_layer = static_cast<double>(o.hidden * o.hidden + o.hidden);
  const std::int64_t layers = std::max<std::int64_t>(1, std::llround(static_cast<double>(*target) / per_layer));
  nlohmann::json out;
  for (int stage : {0, 1, 2}) {
    at::manual_seed(1);
    Mlp model(o.hidden, layers);
    engine::EngineOptions so;
    so.stage = stage;
    so.optimizer.type = OptimizerType::kAdamW;
    so.chunks.chunk_size_elems = 0;  // searched for the least padding, as in training
    so.chunks.search_range_elems = 32ull << 20;
    so.chunks.search_step_elems = static_cast<std::uint64_t>(o.hidden);
    so.reduce_bucket_size = *bucket;
    auto opt = engine::Engine::create(model.parameters(), **comm, so);
    if (!opt) {
      fmt::print(stderr, "bench zero: stage {}: {}\n", stage, opt.error());
      return 1;
    }
    at::Tensor x = at::randn({o.batch, o.hidden});
    std::vector<double> iter_s, step_s;
    std::uint64_t grad_bytes = 0;  // peak over the timed steps
    for (int s = 0; s < o.steps + 1; ++s) {
      const auto t0 = std::chrono::steady_clock::now();
      if (auto st = (*opt)->backward(model.forward(x).square().mean()); !st) return 1;
      const auto t1 = std::chrono::steady_clock::now();
      auto r = (*opt)->step();
      if (!r) {
        fmt::print(stderr, "bench zero: stage {}: {}\n", stage, r.error());
        return 1;
      }
      const auto t2 = std::chrono::steady_clock::now();
      if (s == 0) continue;  // warm-up: first-touch of state and buffers
      grad_bytes = std::max(grad_bytes, (*opt)->last_metrics().peak_grad_bytes);
      iter_s.push_back(std::chrono::duration<double>(t2 - t0).count());
      step_s.push_back(std::chrono::duration<double>(t2 - t1).count());
    }
    std::int64_t n_params = 0;
    for (const auto& p : model.parameters()) n_params += p.numel();
    out[fmt::format("stage{}", stage)] = {{"state_bytes", (*opt)->state_bytes()},
                                          {"grad_bytes", grad_bytes},
                                          {"iteration_s", median(iter_s)},
                                          {"step_s", median(step_s)},
                                          {"params", n_params}};
  }
  std::ofstream(fmt::format("{}/rank{}.json", o.worker_dir, (*comm)->rank())) << out.dump();
  return 0;
}

int run_parent(const ZeroBenchOptions& o) {
  auto ranks = run_bench_ranks("zero", o.world, {"--params", o.params, "--steps", std::to_string(o.steps), "--hidden",
                                                 std::to_string(o.hidden), "--batch", std::to_string(o.batch),
                                                 "--reduce-bucket", o.reduce_bucket});
  if (!ranks) {
    fmt::print(stderr, "bench zero: {}\n", ranks.error());
    return 1;
  }
  // Per-rank figures: state bytes are the largest rank's; times the slowest rank's.
  nlohmann::json agg;
  for (const nlohmann::json& j : *ranks) {
    for (const auto& [stage, v] : j.items()) {
      for (const char* k : {"state_bytes", "grad_bytes", "iteration_s", "step_s", "params"}) {
        const double prev = agg.contains(stage) && agg[stage].contains(k) ? agg[stage][k].get<double>() : 0.0;
        agg[stage][k] = std::max(prev, v[k].get<double>());
      }
    }
  }
  BenchReport report("zero");
  report.set_config("params", agg["stage0"]["params"].get<double>());
  report.set_config("world", o.world);
  report.set_config("steps", o.steps);
  report.set_config("optimizer", "AdamW fp32");
  report.set_config("reduce_bucket_elems", o.reduce_bucket);
  const double s0_bytes = agg["stage0"]["state_bytes"].get<double>();
  report.add("stage0 state/rank", s0_bytes / (1 << 20), "MiB");
  for (const char* st : {"stage1", "stage2"}) {
    const double b = agg[st]["state_bytes"].get<double>();
    report.add(fmt::format("{} state/rank", st), b / (1 << 20), "MiB", "stage0", s0_bytes / (1 << 20),
               b <= s0_bytes / o.world * 1.01 ? "<= 1/world + 1%: yes" : "<= 1/world + 1%: NO");
    report.add_ratio(fmt::format("{}_state_bytes_vs_stage0", st), b / s0_bytes);
  }
  // Gradients: stages 0-1 keep full-size buffers; stage 2 keeps 1/world in fp32 shards
  // plus the buffers waiting for or in their reduce-scatter.
  const double s0_grads = agg["stage0"]["grad_bytes"].get<double>();
  report.add("stage0 grads/rank", s0_grads / (1 << 20), "MiB", "", std::nullopt, "peak: full-size buffers");
  for (const char* st : {"stage1", "stage2"}) {
    const double b = agg[st]["grad_bytes"].get<double>();
    report.add(fmt::format("{} grads/rank", st), b / (1 << 20), "MiB", "stage0", s0_grads / (1 << 20), "peak");
    report.add_ratio(fmt::format("{}_grad_bytes_vs_stage0", st), b / s0_grads);
  }
  const double s0_iter = agg["stage0"]["iteration_s"].get<double>(), s0_step = agg["stage0"]["step_s"].get<double>();
  report.add("stage0 iteration", s0_iter * 1e3, "ms");
  report.add("stage0 step", s0_step * 1e3, "ms");
  for (const char* st : {"stage1", "stage2"}) {
    const double it = agg[st]["iteration_s"].get<double>(), sp = agg[st]["step_s"].get<double>();
    report.add(fmt::format("{} iteration", st), it * 1e3, "ms", "stage0", s0_iter * 1e3);
    report.add(fmt::format("{} step", st), sp * 1e3, "ms", "stage0", s0_step * 1e3,
               "reduce + optimizer + gather");
    report.add_ratio(fmt::format("{}_iteration_vs_stage0", st), it / s0_iter);
  }
  report.print(o.json);
  return 0;
}

}  // namespace

void add_bench_zero(CLI::App& bench, int* exit_code) {
  auto* cmd = bench.add_subcommand("zero", "Optimizer-state bytes and step time: stage 0 vs ZeRO-1 vs ZeRO-2");
  auto o = std::make_shared<ZeroBenchOptions>();
  cmd->add_option("--params", o->params, "Model size in parameters (e.g. 100M)");
  cmd->add_option("--world", o->world, "Ranks to start")->check(CLI::Range(1, 64));
  cmd->add_option("--steps", o->steps, "Timed steps per stage (median reported)")->check(CLI::Range(1, 1000));
  cmd->add_option("--hidden", o->hidden, "Width of the model's layers")->check(CLI::Range(16, 16384));
  cmd->add_option("--batch", o->batch, "Rows per rank per step")->check(CLI::Range(1, 4096));
  cmd->add_option("--reduce-bucket", o->reduce_bucket,
                  "Stage 2: gradient elements in full-size buffers at once (reduce_bucket_size)");
  cmd->add_flag("--json", o->json, "Print one JSON object");
  cmd->add_option("--worker", o->worker_dir, "(internal) run as one rank, writing figures here")->group("");
  cmd->callback([o, exit_code] { *exit_code = o->worker_dir.empty() ? run_parent(*o) : run_worker(*o); });
}

}  // namespace strata::cli
