// strata bench zero3: the GPT model across 2 ranks, for stage 0 (unsharded data
// parallel), stage 3 with compute memory only, stage 3 with a compute budget of a
// quarter of the model, and stage 3 `auto` with a budget that forces about half of the
// state off compute, measured in one run.
//
// Like bench zero, the command starts the ranks itself (`--worker DIR`); each rank
// writes its figures to DIR/rank<k>.json and the parent prints them.
//
// --device cuda (docs/gpu.md): one GPU, world 1, a GPT of about 1.2B parameters
// (custom:24x2048x16) in bf16 by default: stage 3 with the parameter shards on the GPU
// and the optimizer state on host, stage 3 with both on host, then the same GPT in plain
// PyTorch on the GPU (torch.optim.AdamW under bf16 autocast) and under FSDP2 with
// CPUOffloadPolicy (scripts/torch_zero_baseline.py, with $STRATA_PYTHON, a CUDA torch),
// and stage 3 with everything on the GPU (the optimizer stepped there by ATen ops),
// against plain PyTorch. strata's GPU placements keep bf16 gradient shards (lossless
// with bf16 compute and one micro-step).
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <string_view>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench_gpt_runs.h"
#include "bench_largest.h"
#include "bench_report.h"
#include "commands.h"
#include "launcher.h"
#include "rank_threads.h"
#include "strata/base/units.h"
#include "strata/comm/rendezvous.h"
#include "strata/engine/engine.h"
#include "strata/engine/module_hooks.h"
#include "strata/nn/models/gpt.h"
#include "strata/tiers/device.h"
#include "strata/tiers/memory_probe.h"

namespace strata::cli {
namespace {

struct Zero3BenchOptions {
  std::string model = "custom:16x512x8";  // about 50M parameters with byte-level tokens
  int world = 2;
  int steps = 4;
  std::int64_t seq = 128;
  std::int64_t batch = 4;
  std::string chunk = "0";  // 0: the planner searches for the size with the least padding
  bool fp32 = false;        // default bf16 compute (oneDNN); fp32 matmuls use Debian's reference BLAS
  std::string device = "cpu";  // cpu, or cuda: the GPU configurations (one rank)
  bool json = false;
  std::string worker_dir;
  bool largest = false;  // --device cuda: also the largest model search (bench_largest.h)
  bool largest_only = false;  // the search alone (a device call of its own: it takes minutes per attempt)
  LargestOptions largest_opts;
};

std::pair<at::Tensor, at::Tensor> batch_for(std::int64_t step, int rank, std::int64_t batch, std::int64_t seq) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(1000 * step + rank);
  at::Tensor d = at::randint(0, 256, {batch, seq + 1}, g, at::kLong);
  return {d.narrow(1, 0, seq).contiguous(), d.narrow(1, 1, seq).contiguous()};
}

// A configuration that did not run. `cannot_fit`: the planner found its budget smaller
// than one step's working set (a small model under the quarter budget): the others are
// still measured and the report says why this one is missing. Planning is the same on
// every rank, so every rank skips it together and the collectives stay matched.
nlohmann::json failed_config(const Error& e) {
  return {{"error", e.to_string()}, {"cannot_fit", e.code() == ErrorCode::kResourceExhausted}};
}

// One configuration: `steps` timed steps after two warm-up steps (the first records the
// trace, the second is the first scheduled one).
// `auto_budget` is the compute budget of stage3_auto.
nlohmann::json run_config(const std::string& name, const Zero3BenchOptions& o, comm::Communicator& comm,
                          const nn::GPTConfig& cfg, std::uint64_t auto_budget) {
  const bool gpu = o.device == "cuda";
  const c10::Device dev = gpu ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  nn::GPT model(cfg);
  model->init_weights(1);
  const std::uint64_t model_bytes = static_cast<std::uint64_t>(cfg.parameter_count()) * 4;
  Config c;
  c.optimizer.type = OptimizerType::kAdamW;
  c.optimizer.lr = 1e-4;
  c.bf16.enabled = !o.fp32;
  c.strata.optimizer_threads = threads_per_rank();
  c.strata.chunk_size = *parse_size(o.chunk);
  c.strata.chunk_search_range = 4ull << 20;
  c.zero_optimization.stage3_param_persistence_threshold = 0;
  // DeepSpeed's default prefetch bucket (5e7 elements) is larger than this model: the
  // quarter budget, not the bucket, limits prefetching there.
  c.zero_optimization.stage3_prefetch_bucket_size = 50'000'000;
  c.zero_optimization.stage3_max_live_parameters = 1'000'000'000;
  c.zero_optimization.stage = name == "stage0" ? 0 : 3;
  if (name == "stage3_quarter") {
    c.strata.compute_budget = model_bytes / 4;
    c.zero_optimization.offload_param.device = OffloadDevice::kCpu;
    c.zero_optimization.offload_optimizer.device = OffloadDevice::kCpu;
  } else if (name == "stage3_auto") {
    c.strata.placement = Placement::kAuto;
    c.strata.compute_budget = auto_budget;
  } else if (name == "gpu_all") {  // shards, gradients and optimizer state in GPU memory
  } else if (name == "gpu_optim_host") {  // parameter shards in GPU memory
    c.zero_optimization.offload_optimizer.device = OffloadDevice::kCpu;
  } else if (name == "gpu_offload") {  // FSDP2 CPUOffloadPolicy's placement
    c.zero_optimization.offload_param.device = OffloadDevice::kCpu;
    c.zero_optimization.offload_optimizer.device = OffloadDevice::kCpu;
  }
  // On a GPU in bf16: the gradient shards in bf16 too (strata.gradient_shard_dtype). One
  // micro-step a step, so a reduced gradient is bf16 already and nothing is lost; the
  // offloaded placements copy half the bytes to the host and their step reads half.
  if (gpu && c.bf16.enabled) c.strata.gradient_shard_dtype = StateDtype::kBf16;
  auto eo = engine::EngineOptions::from_config(c, comm.world());
  if (!eo) return failed_config(eo.error());
  eo->compute_device = dev;
  auto made = engine::shard(*model, comm, *eo);
  if (!made) return failed_config(made.error());
  std::unique_ptr<engine::Engine> eng = std::move(*made);
  const bool z3 = eng->stage() == 3;
  std::vector<double> step_s;
  engine::StepMetrics m;
  for (int s = 0; s < o.steps + 2; ++s) {
    if (s == 2) tiers::MemoryProbe::reset_peak();
    auto [x, y] = batch_for(s, comm.rank(), o.batch, o.seq);
    const auto t0 = std::chrono::steady_clock::now();
    at::Tensor loss = model->loss(x.to(dev), y.to(dev));
    Status st = eng->backward(loss);
    if (!st) return failed_config(st.error());
    auto r = eng->step();
    if (!r) return failed_config(r.error());
    // The step's device work, not only its launches: a copy back waits for the stream.
    if (gpu) (void)at::zeros({1}, at::TensorOptions().device(dev)).item<float>();
    if (s < 2) continue;
    step_s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    // Sum the timed steps' figures.
    const auto& l = eng->last_metrics();
    m.moved += l.moved;
    m.planned += l.planned;
    m.gathers += l.gathers;
    m.prefetch_hits += l.prefetch_hits;
    m.gather_wait_s += l.gather_wait_s;
    for (std::size_t t = 0; t < 3; ++t) m.peak[t] = std::max(m.peak[t], l.peak[t]);
  }
  const double t = median(step_s);
  nlohmann::json j = {{"step_s", t}, {"tokens_per_s", static_cast<double>(o.batch * o.seq * comm.world()) / t}};
  // Every live CPU byte of the timed steps: model state, gathered chunks, activations.
  j["probe_peak"] = tiers::MemoryProbe::peak_bytes();
  // Model state held on compute at its peak (params, grads, optimizer state, gathered
  // chunks and gradient buffers; reservations, not activations).
  j["peak_compute"] = m.peak[0];
  if (z3) {
    const double n = static_cast<double>(o.steps);
    j["compute_budget"] = c.strata.compute_budget;
    j["peak_host"] = m.peak[1];
    j["host_compute_bytes"] = m.moved.host_compute() / n;
    j["host_compute_plan"] = m.planned.host_compute() / n;
    j["net_gather_bytes"] = m.moved.net_gather / n;
    j["net_reduce_scatter_bytes"] = m.moved.net_reduce_scatter / n;
    j["gathers"] = m.gathers / n;
    j["prefetch_hit_rate"] = m.gathers ? static_cast<double>(m.prefetch_hits) / m.gathers : 0.0;
    j["gather_wait_s"] = m.gather_wait_s / n;
  }
  return j;
}

int run_worker(const Zero3BenchOptions& o) {
  tiers::MemoryProbe::install();  // before the model allocates: the auto policy measures with it
  apply_rank_threads();
  auto comm = comm::init_from_env();
  if (!comm) {
    fmt::print(stderr, "bench zero3: {}\n", comm.error());
    return 1;
  }
  auto cfg = nn::gpt_config(o.model, 256, o.seq);
  if (!cfg) {
    fmt::print(stderr, "bench zero3: {}\n", cfg.error());
    return 1;
  }
  nlohmann::json out;
  out["params"] = cfg->parameter_count();
  std::uint64_t auto_budget = 0;
  const std::vector<const char*> names = o.device == "cuda"
                                             ? std::vector<const char*>{"gpu_all", "gpu_optim_host", "gpu_offload"}
                                             : std::vector<const char*>{"stage0", "stage3_compute", "stage3_quarter",
                                                                        "stage3_auto"};
  for (const char* name : names) {
    if (std::string_view(name) == "stage3_auto" && out["stage3_compute"].contains("error")) {
      out[name] = {{"error", "not run: its budget is derived from stage3_compute, which did not run"},
                   {"cannot_fit", true}};
      continue;
    }
    out[name] = run_config(name, o, **comm, *cfg, auto_budget);
    if (out[name].contains("error")) {
      const bool skip = out[name]["cannot_fit"].get<bool>();
      if ((*comm)->rank() == 0 || !skip) {
        fmt::print(stderr, "bench zero3: {}: {}{}\n", name, out[name]["error"].get<std::string>(),
                   skip ? " (not measured; the other configurations go on)" : "");
      }
      if (!skip) return 1;
      continue;
    }
    if ((*comm)->rank() == 0) {
      fmt::print(stderr, "bench zero3: {} done: {:.0f} tokens/s\n", name, out[name]["tokens_per_s"].get<double>());
    }
    if (std::string_view(name) == "stage3_compute") {
      // auto gets what compute-only needed at its peak (activations included) less half
      // of the model state it held then, so it must move about half of the state to host
      // whatever the model's shape. Ranks take the largest figure: placement and
      // schedule must agree across ranks.
      const auto& r = out[name];
      at::Tensor peak = at::full(
          {1}, r["probe_peak"].get<double>() - 0.5 * r["peak_compute"].get<double>(), at::kDouble);
      if (Status st = (*comm)->all_reduce(peak, comm::ReduceOp::kMax).wait(); !st) {
        fmt::print(stderr, "bench zero3: {}\n", st.error());
        return 1;
      }
      auto_budget = static_cast<std::uint64_t>(peak.item<double>());
    }
  }
  std::ofstream(fmt::format("{}/rank{}.json", o.worker_dir, (*comm)->rank())) << out.dump();
  return 0;
}

std::vector<std::string> worker_args(const Zero3BenchOptions& o) {
  std::vector<std::string> args = {"--model", o.model, "--steps", std::to_string(o.steps), "--seq", std::to_string(o.seq),
                                   "--batch", std::to_string(o.batch), "--chunk", o.chunk, "--device", o.device};
  if (o.fp32) args.push_back("--fp32");
  return args;
}

// --device cuda: strata's two GPU placements in one rank, then plain PyTorch and FSDP2
// (CPUOffloadPolicy) on the same GPU.
int run_parent_gpu(const Zero3BenchOptions& o) {
  auto got = run_bench_ranks("zero3", 1, worker_args(o));
  if (!got) {
    fmt::print(stderr, "bench zero3: {}\n", got.error());
    return 1;
  }
  const nlohmann::json j = (*got)[0];
  for (const char* cfg : {"gpu_all", "gpu_optim_host", "gpu_offload"}) {
    if (j[cfg].contains("error")) {  // no budget on the GPU: a placement that cannot run is a failure
      fmt::print(stderr, "bench zero3: {}: {}\n", cfg, j[cfg]["error"].get<std::string>());
      return 1;
    }
  }
  BenchDir dir("zero3");
  if (!dir.ok()) {
    fmt::print(stderr, "bench zero3: cannot make a temporary directory\n");
    return 1;
  }
  const GptRun run{.model = o.model, .world = 1, .steps = o.steps + 2, .seq = o.seq, .batch = o.batch, .fp32 = o.fp32};
  auto torch_tps = gpt_script_tokens_per_s(run, {"--device", "cuda", "--optimizer", "adamw"}, "plain PyTorch on the GPU",
                                           dir.path());
  auto fsdp2_tps = gpt_script_tokens_per_s(run, {"--device", "cuda", "--optimizer", "fsdp2"},
                                           "FSDP2 with CPUOffloadPolicy", dir.path());
  for (const auto* r : {&torch_tps, &fsdp2_tps}) {
    if (!*r) {
      fmt::print(stderr, "bench zero3: {}\n", r->error());
      return 1;
    }
  }
  const tiers::DeviceInfo dev = tiers::detect_device();
  BenchReport report("zero3");
  report.set_config("device", dev.gpus.empty() ? std::string("cuda") : dev.gpus[0].name);
  report.set_config("model", o.model);
  report.set_config("params", j["params"]);
  report.set_config("world", 1);
  report.set_config("tokens_per_step", o.batch * o.seq);
  report.set_config("compute_dtype", o.fp32 ? "fp32" : "bf16");
  const double fsdp2 = *fsdp2_tps;
  report.add("fsdp2_cpu_offload tokens/s", fsdp2, "tok/s", "", std::nullopt,
             "fully_shard per block, CPUOffloadPolicy, torch.optim.AdamW");
  report.add("torch_unsharded tokens/s", *torch_tps, "tok/s", "fsdp2_cpu_offload", fsdp2,
             "the whole model and AdamW on the GPU, bf16 autocast");
  // Everything on the GPU is measured against plain PyTorch, which holds the same there;
  // the offloaded placements against FSDP2 with CPUOffloadPolicy.
  const std::map<std::string, std::pair<const char*, const char*>> what = {
      {"gpu_all", {"torch_unsharded", "stage 3, shards, gradients and optimizer state on the GPU (ATen step)"}},
      {"gpu_optim_host", {"fsdp2_cpu_offload", "stage 3, shards on the GPU, optimizer on host"}},
      {"gpu_offload", {"fsdp2_cpu_offload", "stage 3, shards and optimizer on host"}}};
  for (const auto& [cfg, base] : what) {
    const auto& c = j[cfg];
    const bool vs_torch = std::string_view(base.first) == "torch_unsharded";
    report.add(fmt::format("strata_{} tokens/s", cfg), c["tokens_per_s"].get<double>(), "tok/s", base.first,
               vs_torch ? *torch_tps : fsdp2, base.second);
    report.add(fmt::format("strata_{} peak compute", cfg), c["peak_compute"].get<double>() / (1 << 20), "MiB", "",
               std::nullopt, "model state reserved on the GPU at its peak (not activations)");
  }
  report.add_ratio("strata_all_on_gpu_tokens_vs_torch", j["gpu_all"]["tokens_per_s"].get<double>() / *torch_tps);
  report.add_ratio("strata_optim_host_tokens_vs_fsdp2", j["gpu_optim_host"]["tokens_per_s"].get<double>() / fsdp2);
  if (o.largest) {
    if (Status st = add_largest_models(o.largest_opts, report, dir.path()); !st) {
      fmt::print(stderr, "bench zero3: largest model: {}\n", st.error());
      return 1;
    }
  }
  report.add_ratio("strata_offload_tokens_vs_fsdp2", j["gpu_offload"]["tokens_per_s"].get<double>() / fsdp2);
  report.print(o.json);
  return 0;
}

// --largest-only, and --largest-simulate (no attempt starts): the largest-model search
// and its report, without the tokens/s configurations.
int run_largest_only(const Zero3BenchOptions& o) {
  BenchDir dir("zero3");
  if (!dir.ok()) {
    fmt::print(stderr, "bench zero3: cannot make a temporary directory\n");
    return 1;
  }
  BenchReport report("zero3");
  report.set_config("largest_width", o.largest_opts.hidden);
  report.set_config("largest_tokens_per_step", o.largest_opts.seq * o.largest_opts.batch);
  if (o.largest_opts.simulate == 0) {
    const tiers::DeviceInfo dev = tiers::detect_device();
    report.set_config("device", dev.gpus.empty() ? std::string("cuda") : dev.gpus[0].name);
  }
  if (const Status st = add_largest_models(o.largest_opts, report, dir.path()); !st) {
    fmt::print(stderr, "bench zero3: largest model: {}\n", st.error());
    return 1;
  }
  report.print(o.json);
  return 0;
}

int run_parent(const Zero3BenchOptions& o) {
  if (o.largest_only) return run_largest_only(o);
  if (o.device == "cuda") return run_parent_gpu(o);
  auto got = run_bench_ranks("zero3", o.world, worker_args(o));
  if (!got) {
    fmt::print(stderr, "bench zero3: {}\n", got.error());
    return 1;
  }
  // Rank 0's figures (ranks are symmetric); tokens/s is the slower rank's.
  const std::vector<nlohmann::json>& ranks = *got;
  nlohmann::json j = ranks[0];
  auto measured = [&](const char* cfg) { return !j[cfg].contains("error"); };
  if (!measured("stage0")) {  // nothing to compare with (no budget there: not expected)
    fmt::print(stderr, "bench zero3: stage0: {}\n", j["stage0"]["error"].get<std::string>());
    return 1;
  }
  for (const char* cfg : {"stage0", "stage3_compute", "stage3_quarter", "stage3_auto"}) {
    if (!measured(cfg)) continue;
    for (const auto& r : ranks) j[cfg]["tokens_per_s"] = std::min(j[cfg]["tokens_per_s"].get<double>(), r[cfg]["tokens_per_s"].get<double>());
  }
  BenchReport report("zero3");
  report.set_config("model", o.model);
  report.set_config("params", j["params"]);
  report.set_config("world", o.world);
  report.set_config("tokens_per_step", o.batch * o.seq * o.world);
  report.set_config("chunk_elems", o.chunk);
  report.set_config("compute_dtype", o.fp32 ? "fp32" : "bf16");
  const double base = j["stage0"]["tokens_per_s"].get<double>();
  report.add("stage0 tokens/s", base, "tok/s");
  for (const char* cfg : {"stage3_compute", "stage3_quarter", "stage3_auto"}) {
    const auto& c = j[cfg];
    if (!measured(cfg)) {
      report.add_skipped(cfg, c["error"].get<std::string>());
      continue;
    }
    report.add(fmt::format("{} tokens/s", cfg), c["tokens_per_s"].get<double>(), "tok/s", "stage0", base);
    const double budget = c["compute_budget"].get<double>();
    report.add(fmt::format("{} peak compute", cfg), c["peak_compute"].get<double>() / (1 << 20), "MiB", "stage0",
               j["stage0"]["peak_compute"].get<double>() / (1 << 20),
               fmt::format("per rank, measured; budget {}",
                           budget > 0 ? format_bytes(static_cast<std::uint64_t>(budget)) : "none"));
    report.add(fmt::format("{} peak host", cfg), c["peak_host"].get<double>() / (1 << 20), "MiB");
    report.add(fmt::format("{} gather (net)", cfg), c["net_gather_bytes"].get<double>() / (1 << 20), "MiB/step");
    report.add(fmt::format("{} reduce-scatter (net)", cfg), c["net_reduce_scatter_bytes"].get<double>() / (1 << 20), "MiB/step");
    report.add(fmt::format("{} host<->compute", cfg), c["host_compute_bytes"].get<double>() / (1 << 20), "MiB/step",
               "planner", c["host_compute_plan"].get<double>() / (1 << 20));
    report.add(fmt::format("{} prefetch hit rate", cfg), c["prefetch_hit_rate"].get<double>(), "",
               "", std::nullopt, fmt::format("{:.0f} gathers/step, {:.3f} s/step blocked", c["gathers"].get<double>(),
                                             c["gather_wait_s"].get<double>()));
  }
  if (measured("stage3_compute")) {
    report.add_ratio("stage3_tokens_vs_stage0", j["stage3_compute"]["tokens_per_s"].get<double>() / base);
  }
  if (measured("stage3_quarter")) {
    report.add_ratio("stage3_quarter_tokens_vs_stage0", j["stage3_quarter"]["tokens_per_s"].get<double>() / base);
    report.add_ratio("prefetch_hit_rate_quarter_budget", j["stage3_quarter"]["prefetch_hit_rate"].get<double>());
    const double plan = j["stage3_quarter"]["host_compute_plan"].get<double>();
    report.add_ratio("host_compute_bytes_vs_plan",
                     plan > 0 ? j["stage3_quarter"]["host_compute_bytes"].get<double>() / plan : 0.0);
  }
  if (measured("stage3_auto")) {
    report.add_ratio("stage3_auto_tokens_vs_stage0", j["stage3_auto"]["tokens_per_s"].get<double>() / base);
  }
  report.print(o.json);
  return 0;
}

}  // namespace

void add_bench_zero3(CLI::App& bench, int* exit_code) {
  auto* cmd = bench.add_subcommand("zero3", "GPT training: stage 0 vs stage 3 (compute, 1/4 budget, auto)");
  auto o = std::make_shared<Zero3BenchOptions>();
  cmd->add_option("--model", o->model, "GPT size (tiny, gpt2, custom:LxHxA)");
  cmd->add_option("--world", o->world, "Ranks to start")->check(CLI::Range(1, 64));
  cmd->add_option("--steps", o->steps, "Timed steps per configuration")->check(CLI::Range(1, 1000));
  cmd->add_option("--seq", o->seq, "Sequence length")->check(CLI::Range(8, 8192));
  cmd->add_option("--batch", o->batch, "Sequences per rank per step")->check(CLI::Range(1, 1024));
  cmd->add_option("--chunk", o->chunk, "Chunk size in elements (e.g. 1M); 0 searches for the least padding");
  cmd->add_flag("--fp32", o->fp32, "Compute in fp32 (default bf16)");
  cmd->add_option("--device", o->device, "cpu, or cuda: strata's GPU placements against PyTorch and FSDP2 on one GPU "
                                         "(default model custom:24x2048x16, --seq 512, --batch 8)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_flag("--json", o->json, "Print one JSON object");
  cmd->add_flag("--largest", o->largest,
                "--device cuda: also the largest GPT that strata and FSDP2 each train for 3 steps here, parameters "
                "and optimizer state off the GPU (minutes per attempt)");
  cmd->add_option("--largest-width", o->largest_opts.hidden, "--largest: the models' hidden size (heads: width/128)")
      ->check(CLI::Range(128, 65536));
  cmd->add_option("--largest-attempts", o->largest_opts.attempts, "--largest: attempts per system")
      ->check(CLI::Range(1, 20));
  cmd->add_flag("--largest-only", o->largest_only,
                "--device cuda: the --largest search alone, without the tokens/s configurations");
  cmd->add_option("--largest-start-strata", o->largest_opts.strata_start,
                  "--largest: layers of strata's first attempt (default: where its bytes per parameter fill the machine)")
      ->check(CLI::Range(1, 10000));
  cmd->add_option("--largest-start-fsdp2", o->largest_opts.fsdp2_start,
                  "--largest: layers of FSDP2's first attempt (default: where its bytes per parameter fill the machine)")
      ->check(CLI::Range(1, 10000));
  cmd->add_option("--nvme-path", o->largest_opts.nvme_path, "--largest: strata's nvme directory (default: a temporary one)");
  cmd->add_option("--worker", o->worker_dir, "(internal) run as one rank")->group("");
  cmd->add_option("--largest-simulate", o->largest_opts.simulate,
                  "(testing) run the --largest search only, on simulated attempts")->group("");
  cmd->callback([cmd, o, exit_code] {
    o->largest_opts.heads = std::max<std::int64_t>(1, o->largest_opts.hidden / 128);
    if (o->largest_opts.simulate > 0) {  // the search and its report, no attempt started
      *exit_code = run_largest_only(*o);
      return;
    }
    if ((o->largest || o->largest_only) && o->device != "cuda") {
      fmt::print(stderr, "bench zero3: --largest compares with FSDP2 on a GPU: it needs --device cuda\n");
      *exit_code = 2;
      return;
    }
    if (o->device == "cuda" && o->worker_dir.empty()) {
      // A GPU's size of model and batch, unless given.
      if (cmd->count("--model") == 0) o->model = "custom:24x2048x16";
      if (cmd->count("--seq") == 0) o->seq = 512;
      if (cmd->count("--batch") == 0) o->batch = 8;
      const tiers::DeviceInfo d = tiers::detect_device();
      if (!d.built_with_cuda || d.cuda_device_count == 0) {
        fmt::print(stderr, "bench zero3: --device cuda needs strata built with CUDA and a GPU (docs/gpu.md)\n");
        *exit_code = 2;
        return;
      }
    }
    *exit_code = o->worker_dir.empty() ? run_parent(*o) : run_worker(*o);
  });
}

}  // namespace strata::cli
