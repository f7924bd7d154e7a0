#include "train_options.h"

#include "strata/base/lr_schedule.h"

#include <cmath>
#include <filesystem>

#include <CLI/CLI.hpp>
#include <fmt/chrono.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "strata/base/units.h"
#include "strata/ckpt/checkpoint.h"
#include "strata/nn/data/byte_corpus.h"
#include "strata/nn/models/gpt_config.h"
#include "strata/tiers/device.h"

namespace strata::cli {
namespace fs = std::filesystem;
namespace {

Result<OffloadDevice> parse_device(const std::string& flag, const std::string& v) {
  if (v == "none") return OffloadDevice::kNone;
  if (v == "cpu") return OffloadDevice::kCpu;
  if (v == "nvme") return OffloadDevice::kNvme;
  return make_error(ErrorCode::kInvalidArgument, "{} {}: expected cpu, nvme or none", flag, v);
}

// --device: checked here, before any rank starts, against what this build and machine
// have (tiers::detect_device).
Result<c10::DeviceType> resolve_compute_device(const std::string& v) {
  if (v == "cpu") return c10::DeviceType::CPU;
  if (v != "auto" && v != "cuda") {
    return make_error(ErrorCode::kInvalidArgument, "--device {}: expected auto, cpu or cuda", v);
  }
  const tiers::DeviceInfo d = tiers::detect_device();
  const bool usable = d.built_with_cuda && d.cuda_device_count > 0;
  if (v == "auto") return usable ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
  if (!d.built_with_cuda) {
    return make_error(ErrorCode::kInvalidArgument,
                      "--device cuda: this strata was built without CUDA (LibTorch {} has none; docs/gpu.md)",
                      d.torch_version);
  }
  if (d.cuda_device_count == 0) return make_error(ErrorCode::kInvalidArgument, "--device cuda: no GPU is visible");
  return c10::DeviceType::CUDA;
}

Result<std::int64_t> parse_int(const std::string& flag, const std::string& v, std::int64_t lo) {
  auto n = parse_size(v);
  if (!n || static_cast<std::int64_t>(*n) < lo) {
    return make_error(ErrorCode::kInvalidArgument, "{} {}: expected a whole number >= {}", flag, v, lo);
  }
  return static_cast<std::int64_t>(*n);
}

// GPT-3's table of peak learning rates (6e-4 at 125M parameters down to 1.2e-4 at
// 6.7B) follows 6e-4 * sqrt(125M / N) within 10%; small models take up to 3e-3, which
// the demo's tiny model trains well with. One rate for every size (3e-3 before) is far
// above what the large models were trained with.
double default_lr(std::int64_t params) {
  return std::min(3e-3, 6e-4 * std::sqrt(125e6 / static_cast<double>(std::max<std::int64_t>(params, 1))));
}

// Warmup when none is given: 10% of the run, and at least one step per 10M parameters.
// Adam's first steps move every weight by about the lr at once (m/sqrt(v) is +-1 when
// one gradient is all it has seen); gpt2-large (710M with the byte vocabulary) at 1.26e-4
// on its first real step went from a loss of 5.66 to 7.36, with a warmup of 10% of a
// 5-step run. A warmup that grows with the model keeps short runs of large models
// stable (72 steps for gpt2-large, 148 for gpt2-xl; tiny and gpt2 keep 10% of their
// default 300 steps). A run shorter than its warmup stays in it, below the peak rate.
// Never 0 for more than one step.
std::int64_t default_warmup(std::int64_t steps, std::int64_t params) {
  const std::int64_t by_size = (params + 9'999'999) / 10'000'000;
  return std::max({steps / 10, by_size, steps > 1 ? std::int64_t{1} : std::int64_t{0}});
}

// The settings `strata train` uses when no --config is given: what the demo shows.
Config demo_config(const std::string& out, const std::string& model) {
  Config c;
  c.zero_optimization.stage = 3;
  c.bf16.enabled = true;
  c.gradient_clipping = 1.0;
  c.train_micro_batch_size_per_gpu = 8;
  c.batch_given.micro = true;
  c.optimizer.type = OptimizerType::kAdamW;
  c.optimizer.betas = {0.9, 0.95};
  c.optimizer.weight_decay = 0.1;
  // Optimizer state on NVMe in the run directory, parameter shards on host, and a
  // simulated compute tier too small for the whole model: every step gathers, evicts
  // and prefetches, and moves bytes on every link.
  c.zero_optimization.offload_optimizer.device = OffloadDevice::kNvme;
  c.zero_optimization.offload_optimizer.nvme_path = out + "/nvme";
  c.zero_optimization.offload_param.device = OffloadDevice::kCpu;
  c.zero_optimization.stage3_param_persistence_threshold = 0;
  // The tiny model gets small chunks so that its few MiB still make dozens of chunks
  // to gather, evict and prefetch; bigger models let the planner search (bounded by the
  // compute budget).
  c.strata.chunk_size = model == "tiny" ? 32768 : 0;
  c.strata.min_io_bytes = 0;  // the demo's shards are small; put them on disk anyway
  return c;
}

// Note [default job name]: the swap directory is <nvme_path>/<job>/rank<r>. Without a
// job name each rank would name it by its pid, and nothing could find what a killed
// rank left behind: not the launcher that outlives it, nor a resumed run. strata train
// names the job after its run directory instead ("train-<dir>-<hash of its absolute
// path>"): the same for every rank and for a --resume into the same directory, and
// different for two runs that share one --nvme-path.
std::string default_job_name(const std::string& out) {
  std::error_code ec;
  fs::path abs = fs::weakly_canonical(fs::absolute(out, ec), ec);
  if (ec) abs = fs::absolute(out);
  std::uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a: stable across builds, unlike std::hash
  for (unsigned char ch : abs.string()) h = (h ^ ch) * 0x100000001b3ULL;
  std::string base = abs.filename().string().substr(0, 32);
  return fmt::format("train-{}-{:08x}", base, static_cast<std::uint32_t>(h ^ (h >> 32)));
}

// A real number in a range, finite: CLI11's PositiveNumber lets "nan" through, and its
// message for 0 prints the largest double in full (309 digits).
CLI::Validator finite_number(bool allow_zero) {
  return CLI::Validator(
      [allow_zero](std::string& text) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        const bool number = end != text.c_str() && *end == '\0' && std::isfinite(v);
        if (number && (allow_zero ? v >= 0 : v > 0)) return {};
        return fmt::format("expected a finite number {} 0, got {}", allow_zero ? ">=" : ">", text);
      },
      allow_zero ? "NUMBER>=0" : "NUMBER>0");
}

}  // namespace

void add_train_flags(CLI::App& cmd, TrainOptions& o) {
  cmd.add_option("--config", o.config_path, "DeepSpeed-style JSON config; flags override its keys");
  cmd.add_option("-n,--nproc", o.nproc, "Local ranks to start (default 2); under torchrun each process is one rank")
      ->check(CLI::Range(1, 256));
  cmd.add_option("--model", o.model, "tiny, gpt2, gpt2-medium, gpt2-large, gpt2-xl or custom:<layers>x<hidden>x<heads>");
  cmd.add_option("--data", o.data, "Text file or folder (default: Debian's fortunes corpus)");
  cmd.add_option("--seq-len", o.seq_len, "Tokens (bytes) per sequence")->check(CLI::Range(2, 1 << 20));
  cmd.add_option("--steps", o.steps, "Optimizer steps")->check(CLI::Range(1, 100'000'000));
  cmd.add_option("--lr", o.lr, "Peak learning rate (linear warmup, then cosine; default: the config's, else by model size, 3e-3 for tiny, 2.5e-4 for gpt2-large)")->check(finite_number(false));
  cmd.add_option("--min-lr", o.min_lr, "Final learning rate (default lr/10)")->check(finite_number(true));
  cmd.add_option("--warmup", o.warmup, "Warmup steps (default 10% of --steps, and at least one per 10M parameters: 72 for gpt2-large)")->check(CLI::NonNegativeNumber);
  cmd.add_option("--seed", o.seed, "Seed of the model's init and the data order");
  cmd.add_option("--eval-every", o.eval_every, "Validation loss every N steps (0 = only at the end)")
      ->check(CLI::NonNegativeNumber);
  cmd.add_option("--eval-batches", o.eval_batches, "Batches per validation (0 = no validation)")
      ->check(CLI::Range(0, 100000));
  cmd.add_flag("--no-save", o.no_save, "Write no checkpoint");
  cmd.add_option("--keep", o.keep, "Checkpoints to keep, the newest (default 2; 0 = all)")->check(CLI::NonNegativeNumber);
  cmd.add_option("--resume", o.resume,
                 "Continue from a checkpoint: a run directory, its checkpoints/ or a step-N in it, or 'latest' "
                 "(the --out run's newest); at any world size")
      ->expected(0, 1)
      ->default_str("latest");
  cmd.add_flag("--overwrite", o.overwrite, "--out holds an earlier run: delete its outputs and checkpoints, start afresh");
  cmd.add_option("--save-every", o.save_every, "Checkpoint every N steps (0 = only at the end)")
      ->check(CLI::NonNegativeNumber);
  cmd.add_option("--out", o.out, "Run directory (default runs/<date>-<time>)");
  cmd.add_option("--sample-bytes", o.sample_bytes, "Bytes to sample from the model at the end (default 200; "
                 "fewer, down to 32, for models over 100M parameters: each byte is a forward)")
      ->check(CLI::Range(0, 100000));
  cmd.add_option("--trace-step", o.trace_step, "Step to write as trace.json, 0-based (default: a steady-state step)")
      ->check(CLI::NonNegativeNumber);
  cmd.add_option("--device", o.device, "Compute device: auto (a GPU when one is visible and strata was built with "
                                       "CUDA), cpu or cuda (docs/gpu.md)");
  cmd.add_option("--stage", o.stage, "ZeRO stage 0-3");
  cmd.add_option("--offload-optimizer", o.offload_optimizer, "cpu, nvme or none");
  cmd.add_option("--offload-param", o.offload_param, "cpu, nvme or none (stage 3)");
  cmd.add_option("--nvme-path", o.nvme_path, "Directory for NVMe offload (default <out>/nvme)");
  cmd.add_option("--compute-budget", o.compute_budget,
                 "Compute tier budget per rank: a size (256MiB), a share of the model (50%), or none");
  cmd.add_option("--placement", o.placement, "static or auto");
  cmd.add_option("--micro-batch", o.micro_batch, "Sequences per rank per micro-step");
  cmd.add_option("--grad-accum", o.grad_accum, "Micro-steps per optimizer step");
  cmd.add_option("--clip", o.clip, "Gradient clipping (max L2 norm; 0 = off)");
  auto* prec = cmd.add_option_group("precision");
  prec->add_flag_callback("--bf16", [&o] { o.precision = "bf16"; }, "bf16 compute, fp32 master (default)");
  prec->add_flag_callback("--fp16", [&o] { o.precision = "fp16"; }, "fp16 compute with dynamic loss scaling");
  prec->add_flag_callback("--fp32", [&o] { o.precision = "fp32"; }, "fp32 compute");
  prec->add_flag_callback("--autocast", [&o] { o.precision = "autocast"; },
                          "bf16 autocast over fp32 parameters (config torch_autocast)");
  prec->require_option(0, 1);
}

namespace {

// --resume's argument -> the checkpoint or checkpoints directory to load, and the run
// directory it belongs to (empty if it is not inside one).
Result<std::pair<fs::path, fs::path>> resume_target(const std::string& resume, const std::string& out) {
  if (resume == "latest") {
    if (out.empty()) return make_error(ErrorCode::kInvalidArgument, "--resume latest needs --out: the run to continue");
    return std::pair{fs::path(out) / "checkpoints", fs::path(out)};
  }
  const fs::path p = fs::path(resume).lexically_normal();
  std::error_code ec;
  if (fs::is_directory(p / "checkpoints", ec)) return std::pair{p / "checkpoints", p};
  const fs::path parent = p.has_filename() ? p.parent_path() : p.parent_path().parent_path();
  if (p.filename() == "checkpoints") return std::pair{p, parent};
  if (parent.filename() == "checkpoints") return std::pair{p, parent.parent_path()};
  return std::pair{p, fs::path()};
}

}  // namespace

Status prepare_out_dir(const TrainOptions& o) {
  std::vector<std::string> found;
  std::error_code ec;
  for (const char* name : {"metrics.jsonl", "checkpoints", "trace.json", "report.png"})
    if (fs::exists(fs::path(o.out) / name, ec)) found.push_back(name);
  if (found.empty() || !o.resume.empty()) return ok();
  if (!o.overwrite) {
    return make_error(ErrorCode::kFailedPrecondition,
                      "{} holds an earlier run ({}); pass --resume to continue it, or --overwrite to replace it "
                      "(its outputs and checkpoints are deleted)",
                      o.out, fmt::join(found, ", "));
  }
  for (const std::string& name : found) fs::remove_all(fs::path(o.out) / name, ec);  // another rank may race us
  return ok();
}

Status TrainOptions::resolve(bool demo_defaults) {
  if (!resume.empty()) {
    STRATA_ASSIGN_OR_RETURN(auto target, resume_target(resume, out));
    auto [ckpt_path, run] = target;
    if (out.empty() && run.empty()) {
      return make_error(ErrorCode::kInvalidArgument, "--resume {}: not inside a run directory; give --out for the continued run", resume);
    }
    if (out.empty()) out = run.string();
    STRATA_ASSIGN_OR_RETURN(fs::path dir, ckpt::resolve_checkpoint(ckpt_path));
    STRATA_ASSIGN_OR_RETURN(ckpt::CheckpointMeta meta, ckpt::read_meta(dir));
    const std::int64_t at = meta.client.value("next_step", meta.step);
    if (at >= steps) {
      return make_error(ErrorCode::kInvalidArgument, "--resume {}: the checkpoint is at step {} and --steps is {}; "
                        "give the run's new total with --steps", dir.string(), at, steps);
    }
    resume = dir.string();
  }
  if (out.empty()) {
    const auto now = std::chrono::system_clock::now();
    out = fmt::format("runs/{:%Y%m%d-%H%M%S}", std::chrono::floor<std::chrono::seconds>(now));
  }
  if (!config_path.empty()) {
    std::vector<std::string> warnings;
    STRATA_ASSIGN_OR_RETURN(config, Config::load(config_path, &warnings));
    for (const auto& w : warnings) fmt::print(stderr, "warning: {}\n", w);
  } else {
    config = demo_defaults ? demo_config(out, model) : Config{};
  }
  Config& c = config;
  if (!stage.empty()) {
    STRATA_ASSIGN_OR_RETURN(std::int64_t s, parse_int("--stage", stage, 0));
    if (s > 3) return make_error(ErrorCode::kInvalidArgument, "--stage {}: expected 0, 1, 2 or 3", stage);
    c.zero_optimization.stage = static_cast<int>(s);
    if (s != 3) c.zero_optimization.offload_param.device = OffloadDevice::kNone;
    if (s == 0) c.zero_optimization.offload_optimizer.device = OffloadDevice::kNone;
  }
  if (!offload_optimizer.empty()) {
    STRATA_ASSIGN_OR_RETURN(c.zero_optimization.offload_optimizer.device,
                            parse_device("--offload-optimizer", offload_optimizer));
  }
  if (!offload_param.empty()) {
    STRATA_ASSIGN_OR_RETURN(c.zero_optimization.offload_param.device, parse_device("--offload-param", offload_param));
  }
  const std::string nvme = nvme_path.empty() ? out + "/nvme" : nvme_path;
  for (auto* path : {&c.zero_optimization.offload_optimizer.nvme_path, &c.zero_optimization.offload_param.nvme_path}) {
    if (!nvme_path.empty() || path->empty()) *path = nvme;
  }
  if (c.strata.job_name.empty()) c.strata.job_name = default_job_name(out);
  if (!placement.empty()) {
    if (placement != "static" && placement != "auto") {
      return make_error(ErrorCode::kInvalidArgument, "--placement {}: expected static or auto", placement);
    }
    c.strata.placement = placement == "auto" ? Placement::kAuto : Placement::kStatic;
  }
  if (!micro_batch.empty()) {
    STRATA_ASSIGN_OR_RETURN(c.train_micro_batch_size_per_gpu, parse_int("--micro-batch", micro_batch, 1));
    c.batch_given.micro = true;
  }
  if (!grad_accum.empty()) {
    STRATA_ASSIGN_OR_RETURN(c.gradient_accumulation_steps, parse_int("--grad-accum", grad_accum, 1));
    c.batch_given.accum = true;
  }
  if (!clip.empty()) {
    char* end = nullptr;
    c.gradient_clipping = std::strtod(clip.c_str(), &end);
    if (*end != '\0' || !std::isfinite(c.gradient_clipping) || c.gradient_clipping < 0) return make_error(ErrorCode::kInvalidArgument, "--clip {}: expected a number >= 0", clip);
  }
  if (!precision.empty()) {
    c.bf16.enabled = precision == "bf16";
    c.fp16.enabled = precision == "fp16";
    c.torch_autocast.enabled = precision == "autocast";
    c.apply_bf16_optimizer_states();
  }
  STRATA_ASSIGN_OR_RETURN(compute, resolve_compute_device(device));
  if (c.fp16.enabled && compute == c10::DeviceType::CPU) {
    return make_error(ErrorCode::kInvalidArgument,
                      "--fp16 needs a GPU: LibTorch has no fp16 matrix multiply on CPU; use --bf16 (or --fp32)");
  }
  if (compute == c10::DeviceType::CUDA) {
    // What the engine does not do on a GPU yet (EngineOptions::validate_device), said
    // before any rank starts.
    if (c.strata.placement != Placement::kStatic) {
      return make_error(ErrorCode::kInvalidArgument, "--device cuda needs --placement static (docs/gpu.md)");
    }
  }

  STRATA_ASSIGN_OR_RETURN(nn::GPTConfig model_cfg, nn::gpt_config(model, 256, 0));
  if (seq_len > model_cfg.context) {
    return make_error(ErrorCode::kInvalidArgument, "--seq-len {} is longer than model {}'s context of {}", seq_len,
                      model, model_cfg.context);
  }
  // The demo's default budget (half the model) makes stage 3 gather, evict and prefetch;
  // stages 0-2 hold the whole model on compute, so they get no default budget. Nor do
  // custom models: half of one may not hold its step's working set (one block's chunks
  // and the gradient buffers: custom:1x512x8 needed 14 MiB against 3.6 MiB,
  // custom:8x256x4 7 MiB against 6.3 MiB), and only the ranks' planners can tell how
  // much that is. The named sizes keep it (tiny, the demo's, and gpt2 were run with it).
  // On a GPU the compute tier is real: its memory is the budget unless one is given.
  const bool default_budget = demo_defaults && config_path.empty() && c.zero_optimization.stage == 3 &&
                              !model.starts_with("custom:") && compute == c10::DeviceType::CPU;
  if (!compute_budget.empty() || default_budget) {
    const std::string b = compute_budget.empty() ? "50%" : compute_budget;
    if (b == "none") {
      c.strata.compute_budget = 0;
    } else if (b.back() == '%') {
      const double pct = std::strtod(b.c_str(), nullptr);
      if (pct <= 0) return make_error(ErrorCode::kInvalidArgument, "--compute-budget {}: expected a positive share", b);
      const std::uint64_t elem = c.bf16.enabled || c.fp16.enabled ? 2 : 4;
      c.strata.compute_budget = static_cast<std::uint64_t>(pct / 100.0 * model_cfg.parameter_count() * elem);
      // Half of a very small model is less than the fixed part of a step's working set
      // (gradient buffers, a few gathered chunks: custom:2x64x2 needed 306 KiB against
      // 178 KiB); the default never goes below 1 MiB. A budget the user gives is theirs.
      if (compute_budget.empty()) c.strata.compute_budget = std::max<std::uint64_t>(c.strata.compute_budget, 1 << 20);
    } else {
      auto bytes = parse_size(b);
      if (!bytes) return make_error(std::move(bytes).error().with_note("--compute-budget"));
      c.strata.compute_budget = *bytes;
    }
  }
  if (lr == 0) lr = config_path.empty() ? default_lr(model_cfg.parameter_count()) : c.optimizer.lr;
  c.optimizer.lr = lr;
  if (min_lr > lr) return make_error(ErrorCode::kInvalidArgument, "--min-lr {:g} is above the peak learning rate {:g}", min_lr, lr);
  if (warmup < 0) warmup = default_warmup(steps, model_cfg.parameter_count());
  // Each sampled byte is a forward that gathers the whole model: 200 of them took about
  // 3 minutes for gpt2-medium here, after a 2.4-minute run. Scaled down past 100M.
  if (sample_bytes < 0) {
    const double scale = std::min(1.0, 100e6 / static_cast<double>(std::max<std::int64_t>(model_cfg.parameter_count(), 1)));
    sample_bytes = std::max<std::int64_t>(32, static_cast<std::int64_t>(200 * scale));
  }
  if (trace_step >= steps) {
    return make_error(ErrorCode::kInvalidArgument, "--trace-step {}: the run's steps are 0..{} (--steps {})", trace_step,
                      steps - 1, steps);
  }
  if (min_lr == 0) min_lr = lr / 10;
  // The schedule is the config's "scheduler" block (its total_num_steps, when not given,
  // is --steps), else strata train's own: DeepSpeed's WarmupCosineLR from --lr, --warmup
  // and --min-lr. The engine applies it (Note [scheduler stepping]).
  if (c.scheduler.type == SchedulerType::kNone) {
    c.scheduler = SchedulerConfig{.type = SchedulerType::kWarmupCosineLR, .warmup_num_steps = warmup,
                                  .warmup_type = "linear", .total_num_steps = steps, .warmup_min_ratio = 0.0,
                                  .cos_min_ratio = min_lr / lr};
  } else if (c.scheduler.total_num_steps == 0) {
    c.scheduler.total_num_steps = steps;
  }
  STRATA_RETURN_IF_ERROR(LrSchedule::create(c.scheduler, lr));
  STRATA_RETURN_IF_ERROR(c.validate());
  // The data must be there, readable, and long enough, before any rank starts.
  STRATA_ASSIGN_OR_RETURN(nn::ByteCorpus corpus, nn::ByteCorpus::open(data.empty() ? nn::kFortunesDir : data));
  for (nn::Split s : {nn::Split::kTrain, nn::Split::kValidation}) {
    if (s == nn::Split::kValidation && eval_batches == 0) continue;
    if (auto st = corpus.sample(s, 1, seq_len, {}); !st) {
      return make_error(std::move(st).error().with_note(
          fmt::format("--data is too small for --seq-len {}: give more data or a shorter --seq-len{}", seq_len,
                      s == nn::Split::kValidation ? ", or --eval-batches 0 for no validation" : "")));
    }
  }
  return ok();
}

}  // namespace strata::cli
