// strata bench infinity: where the step's time goes as model state moves to nvme.
//
// Four real `strata train` runs of the same GPT (stage 3, fp32 compute: a --config run
// takes DeepSpeed's defaults; everything else as `strata bench train`): the optimizer
// state on host; on nvme; parameters and optimizer state on nvme; and the optimizer state
// on nvme with its state tensors and the gradient shards in bf16
// (strata.optimizer_state_dtype, strata.gradient_shard_dtype, as `bench zero3 --largest`
// runs them; with fp32 compute the gradients are rounded to bf16, with bf16 compute
// they would lose nothing), whose nvme bytes and times are compared with the fp32 ones.
// Each run's figures are medians over the steps after the first two (the first records
// the trace), read from its metrics.jsonl: the step split into forward, backward
// and optimizer, the nvme bytes read and written per step, the optimizer step's achieved
// nvme bandwidth, and the run's peak RSS (rank 0's process). The disk's own figures come
// from `strata bench io` on the same directory in the same run: 64 MiB records, read and
// written through the swap store's huge-page pool.
//
// ratios.optimizer_nvme_vs_disk: the time the disk needs for the optimizer step's nvme
// bytes (all ranks': they share the disk) at bench io's rates, reads and writes one after
// the other (read bytes / read GB/s + written bytes / write GB/s), over the optimizer
// step's time: 1.0 means the step runs at the disk's sequential speed; above 1 it
// overlaps reads with writes better than that.
// ratios.step_nvme_vs_host: the whole step with the optimizer on nvme over the step with
// it on host. ratios.nvme_bytes_bf16_vs_fp32 and step_bf16_vs_fp32_nvme: the bf16 state
// and gradients' nvme bytes per step (read + written) and step time over fp32's.

#include <cstdlib>

#include <filesystem>
#include <fstream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench_disk.h"
#include "bench_report.h"
#include "commands.h"
#include "launcher.h"
#include "strata/base/units.h"

namespace strata::cli {
namespace {

namespace fs = std::filesystem;

struct InfinityOptions {
  std::string model = "custom:8x1024x16";
  int world = 1;
  int steps = 8;
  std::int64_t seq = 128;
  std::int64_t batch = 4;
  std::string dir;  // the nvme directory; default: a fresh one under the current directory
  bool json = false;
};

struct InfinityPlacement {
  const char* key;   // figure and ratio names
  const char* what;  // for the table
  const char* optimizer;
  const char* param;
  bool bf16_state = false;  // optimizer state and gradient shards in bf16
};
constexpr InfinityPlacement kPlacements[] = {
    {"host", "optimizer on host", "cpu", "none"},
    {"nvme_optimizer", "optimizer on nvme", "nvme", "none"},
    {"nvme_all", "params + optimizer on nvme", "nvme", "nvme"},
    {"nvme_optimizer_bf16", "optimizer on nvme, bf16 state and gradients", "nvme", "none", true},
};

struct RunFigures {
  double step_s = 0, forward_s = 0, backward_s = 0, optimizer_s = 0;
  double nvme_read = 0, nvme_written = 0;          // bytes per step, whole step
  double opt_nvme_read = 0, opt_nvme_written = 0;  // bytes per step inside the optimizer step
  double peak_rss = 0;
};

Result<RunFigures> run_placement(const InfinityOptions& o, const InfinityPlacement& p, const fs::path& dir) {
  STRATA_ASSIGN_OR_RETURN(std::string self, self_exe());
  const fs::path out = dir / p.key;
  const fs::path config = dir / fmt::format("{}.json", p.key);
  // Every swap record on disk, however small the model.
  nlohmann::json cfg = {{"zero_optimization", {{"stage3_param_persistence_threshold", 0}}},
                        {"strata", {{"min_io_bytes", 0}}}};
  if (p.bf16_state) {
    cfg["strata"]["optimizer_state_dtype"] = "bf16";
    cfg["strata"]["gradient_shard_dtype"] = "bf16";
  }
  std::ofstream(config) << cfg.dump();
  STRATA_RETURN_IF_ERROR(run_as_user({self, "train", "--config", config.string(), "-n", std::to_string(o.world), "--model",
                                    o.model, "--seq-len", std::to_string(o.seq), "--micro-batch", std::to_string(o.batch),
                                    "--steps", std::to_string(o.steps), "--stage", "3", "--compute-budget", "none",
                                    "--offload-optimizer", p.optimizer, "--offload-param", p.param, "--nvme-path",
                                    (dir / "nvme").string(), "--sample-bytes", "0", "--eval-every", "0",
                                    "--eval-batches", "1", "--no-save", "--out", out.string()},
                                   "1>&2", fmt::format("strata train ({})", p.what)));
  std::ifstream in(out / "metrics.jsonl");
  std::vector<double> step, fwd, bwd, opt, rd, wr, ord, owr;
  RunFigures f;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) continue;
    f.peak_rss = std::max(f.peak_rss, j.value("peak_rss", 0.0));
    if (j["step"].get<int>() <= 2) continue;
    step.push_back(j["step_s"].get<double>());
    fwd.push_back(j["forward_s"].get<double>());
    bwd.push_back(j["backward_s"].get<double>());
    opt.push_back(j["optimizer_s"].get<double>());
    rd.push_back(j["moved"]["nvme_to_host"].get<double>());
    wr.push_back(j["moved"]["host_to_nvme"].get<double>());
    ord.push_back(j["optimizer_moved"]["nvme_to_host"].get<double>());
    owr.push_back(j["optimizer_moved"]["host_to_nvme"].get<double>());
  }
  if (step.empty()) return make_error(ErrorCode::kDataLoss, "{}: no timed steps in metrics.jsonl", p.what);
  f.step_s = median(step), f.forward_s = median(fwd), f.backward_s = median(bwd), f.optimizer_s = median(opt);
  f.nvme_read = median(rd), f.nvme_written = median(wr), f.opt_nvme_read = median(ord), f.opt_nvme_written = median(owr);
  return f;
}

int run(const InfinityOptions& o) {
  fs::path dir = o.dir.empty() ? fs::current_path() : fs::path(o.dir);
  std::string tmpl = (dir / "strata-bench-infinity-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    fmt::print(stderr, "bench infinity: cannot make a directory under {}\n", dir.string());
    return 1;
  }
  dir = tmpl;
  auto cleanup = [&dir] {
    std::error_code ec;
    fs::remove_all(dir, ec);
  };
  auto fail = [&](const Error& e) {
    fmt::print(stderr, "bench infinity: {}\n", e);
    cleanup();
    return 1;
  };
  auto disk = disk_figures(dir);
  if (!disk) return fail(disk.error());
  fmt::print(stderr, "bench infinity: disk {:.2f} GB/s read, {:.2f} GB/s write (64 MiB records)\n", disk->read_gbps,
             disk->write_gbps);
  BenchReport report("infinity");
  report.set_config("model", o.model);
  report.set_config("world", o.world);
  report.set_config("tokens_per_step", o.world * o.batch * o.seq);
  report.set_config("steps", o.steps);
  report.add("disk read (bench io, 64 MiB records)", disk->read_gbps, "GB/s");
  report.add("disk write (bench io, 64 MiB records)", disk->write_gbps, "GB/s");
  std::optional<RunFigures> host, fp32_nvme;
  for (const InfinityPlacement& p : kPlacements) {
    auto f = run_placement(o, p, dir);
    if (!f) return fail(f.error());
    fmt::print(stderr, "bench infinity: {}: step {:.2f} s (forward {:.2f}, backward {:.2f}, optimizer {:.2f})\n", p.what,
               f->step_s, f->forward_s, f->backward_s, f->optimizer_s);
    const std::string k = p.key;
    const bool is_host = !host;
    report.add(k + " step", f->step_s, "s", is_host ? "" : "optimizer on host", is_host ? std::nullopt : std::optional(host->step_s));
    report.add(k + " forward", f->forward_s, "s");
    report.add(k + " backward", f->backward_s, "s");
    report.add(k + " optimizer", f->optimizer_s, "s");
    report.add(k + " nvme read per step", f->nvme_read / 1e9, "GB", "", std::nullopt, "rank 0");
    report.add(k + " nvme written per step", f->nvme_written / 1e9, "GB", "", std::nullopt, "rank 0");
    report.add(k + " peak RSS", f->peak_rss / 1e9, "GB", "", std::nullopt, "rank 0's process");
    // Every rank moves the same bytes (equal shards) to the one disk they share.
    const double read = f->opt_nvme_read * o.world, written = f->opt_nvme_written * o.world;
    if (read + written > 0) {
      // The disk's time for these bytes at bench io's rates, over the step's.
      const double disk_s = read / (disk->read_gbps * 1e9) + written / (disk->write_gbps * 1e9);
      report.add(k + " optimizer nvme GB/s", (read + written) / f->optimizer_s / 1e9, "GB/s", "disk for the same bytes",
                 (read + written) / disk_s / 1e9,
                 fmt::format("{} read + {} written, all ranks", format_bytes(static_cast<std::uint64_t>(read)),
                             format_bytes(static_cast<std::uint64_t>(written))));
      if (k == "nvme_optimizer") report.add_ratio("optimizer_nvme_vs_disk", disk_s / f->optimizer_s);
    }
    if (k == "nvme_optimizer") report.add_ratio("step_nvme_vs_host", f->step_s / host->step_s);
    if (k == "nvme_all") report.add_ratio("step_nvme_all_vs_host", f->step_s / host->step_s);
    if (k == "nvme_optimizer") fp32_nvme = *f;
    if (k == "nvme_optimizer_bf16") {
      report.add(k + " nvme bytes per step", (f->nvme_read + f->nvme_written) / 1e9, "GB", "fp32 state and gradients",
                 (fp32_nvme->nvme_read + fp32_nvme->nvme_written) / 1e9, "rank 0, read + written");
      report.add_ratio("nvme_bytes_bf16_vs_fp32",
                       (f->nvme_read + f->nvme_written) / (fp32_nvme->nvme_read + fp32_nvme->nvme_written));
      report.add_ratio("step_bf16_vs_fp32_nvme", f->step_s / fp32_nvme->step_s);
    }
    if (is_host) host = *f;
  }
  cleanup();
  report.print(o.json);
  return 0;
}

}  // namespace

void add_bench_infinity(CLI::App& bench, int* exit_code) {
  auto* cmd = bench.add_subcommand("infinity", "step time, nvme bytes and bandwidth, peak RSS: optimizer on host vs nvme "
                                               "vs params + optimizer on nvme vs bf16 state and gradients on nvme");
  auto o = std::make_shared<InfinityOptions>();
  cmd->add_option("--model", o->model, "GPT size (tiny, gpt2, custom:LxHxA)");
  cmd->add_option("--world", o->world, "Ranks")->check(CLI::Range(1, 2));
  cmd->add_option("--steps", o->steps, "Steps per run; the first two are not timed")->check(CLI::Range(3, 100000));
  cmd->add_option("--seq", o->seq, "Sequence length")->check(CLI::Range(8, 8192));
  cmd->add_option("--batch", o->batch, "Sequences per rank per step")->check(CLI::Range(1, 1024));
  cmd->add_option("--dir", o->dir, "Directory for the nvme files (default: the current directory; not tmpfs)");
  cmd->add_flag("--json", o->json, "Print one JSON object");
  cmd->callback([o, exit_code] { *exit_code = run(*o); });
}

}  // namespace strata::cli
