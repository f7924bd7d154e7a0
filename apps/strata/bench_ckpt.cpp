// strata bench ckpt: how fast a checkpoint moves, next to the disk.
//
// One rank, a GPT of the given size at ZeRO-3 (state on host, or on nvme with
// --offload nvme), one training step so the optimizer state exists; then `repeats`
// saves (each a fresh step directory, every byte fsynced) and as many loads into the
// same engine. Training is blocked for the whole save (saves are synchronous), so the
// blocked time is the save's time, shown next to one training step. The disk's figures
// come from `strata bench io` on the same directory in the same run.
//
// ratios.save_vs_disk: the disk's time for the save's bytes over the save's time (the
// bar: >= 0.7). With the state in memory a save only writes: bench io's write rate. With
// --offload nvme it reads each byte from the swap files while writing the last one out:
// bench io's copy rate (reads and writes in flight together on the same disk).
// ratios.save_vs_disk_one_way: for nvme state, the same with the two directions timed
// apart (write time + read time), which no disk reaches when both share it.
// ratios.load_vs_disk: the same for a load (the checkpoint read; with nvme, the state
// written back: a copy too).
#include <unistd.h>

#include <chrono>
#include <filesystem>

#include <ATen/ATen.h>
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "bench_disk.h"
#include "bench_report.h"
#include "commands.h"
#include "strata/base/units.h"
#include "strata/ckpt/checkpoint.h"
#include "strata/comm/rendezvous.h"
#include "strata/engine/engine.h"
#include "strata/engine/module_hooks.h"
#include "strata/nn/models/gpt.h"

namespace strata::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct CkptOptions {
  std::string model = "custom:8x1024x16";
  std::string offload = "cpu";
  int repeats = 3;
  std::string dir;
  bool json = false;
};

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

Status run(const CkptOptions& o, const fs::path& dir, BenchReport& report) {
  STRATA_ASSIGN_OR_RETURN(DiskFigures disk, disk_figures(dir));
  fmt::print(stderr, "bench ckpt: disk {:.2f} GB/s read, {:.2f} GB/s write, {:.2f} GB/s copy (64 MiB records)\n",
             disk.read_gbps, disk.write_gbps, disk.copy_gbps);
  STRATA_ASSIGN_OR_RETURN(auto comm, comm::init_from_env());
  STRATA_ASSIGN_OR_RETURN(nn::GPTConfig mcfg, nn::gpt_config(o.model, 256, 0));
  nn::GPT model(mcfg, /*deferred=*/true);
  Config cfg;
  cfg.zero_optimization.stage = 3;
  cfg.bf16.enabled = true;
  cfg.zero_optimization.offload_optimizer.device = o.offload == "nvme" ? OffloadDevice::kNvme : OffloadDevice::kCpu;
  cfg.zero_optimization.offload_optimizer.nvme_path = (dir / "nvme").string();
  cfg.strata.job_name = "bench-ckpt";
  STRATA_ASSIGN_OR_RETURN(engine::EngineOptions eo, engine::EngineOptions::from_config(cfg, 1));
  eo.chunks.search_step_elems = static_cast<std::uint64_t>(mcfg.hidden);
  STRATA_ASSIGN_OR_RETURN(auto eng, engine::shard(*model, *comm, std::move(eo), {}, model->initializer(1)));
  at::Tensor tokens = at::randint(0, 256, {1, 65}, at::kLong);
  const auto t0 = Clock::now();
  STRATA_RETURN_IF_ERROR(eng->backward(model->loss(tokens.narrow(1, 0, 64), tokens.narrow(1, 1, 64))));
  STRATA_RETURN_IF_ERROR(eng->step());
  const double step_s = seconds_since(t0);

  std::vector<double> save_s, load_s;
  std::uint64_t bytes = 0;
  const fs::path root = dir / "checkpoints";
  for (int i = 0; i < o.repeats; ++i) {
    const auto ts = Clock::now();
    // keep 0: no pruning inside the save; each checkpoint is deleted after its load,
    // untimed, so no deletion runs under the next timed save or load.
    STRATA_ASSIGN_OR_RETURN(fs::path saved, ckpt::save_checkpoint(*eng, {.root = root, .step = i, .keep = 0}));
    save_s.push_back(seconds_since(ts));
    STRATA_ASSIGN_OR_RETURN(ckpt::CheckpointMeta m, ckpt::read_meta(saved));
    bytes = m.data_bytes();
    const auto tl = Clock::now();
    STRATA_RETURN_IF_ERROR(ckpt::load_checkpoint(*eng, saved));
    load_s.push_back(seconds_since(tl));
    std::error_code ec;
    fs::remove_all(saved, ec);
    fmt::print(stderr, "bench ckpt: {} saved in {:.2f} s, loaded in {:.2f} s\n", format_bytes(bytes), save_s.back(), load_s.back());
  }
  const double save = median(save_s), load = median(load_s);
  const double b = static_cast<double>(bytes);
  const double save_gbps = b / save / 1e9, load_gbps = b / load / 1e9;
  // With the state on nvme a save also reads it from there and a load writes it back.
  const bool nvme = o.offload == "nvme";
  const double save_disk_s = b / ((nvme ? disk.copy_gbps : disk.write_gbps) * 1e9);
  const double load_disk_s = b / ((nvme ? disk.copy_gbps : disk.read_gbps) * 1e9);
  const double one_way_s = b / (disk.write_gbps * 1e9) + b / (disk.read_gbps * 1e9);
  report.set_config("model", o.model);
  report.set_config("parameters", mcfg.parameter_count());
  report.set_config("offload", o.offload);
  report.set_config("repeats", o.repeats);
  report.add("checkpoint size", static_cast<double>(bytes) / 1e9, "GB", "", std::nullopt, "fp32 master + optimizer state");
  const std::string base = nvme ? "the disk copying, for its bytes" : "the disk, for its bytes";
  const std::string also = nvme ? ", the state read from (written to) nvme too" : "";
  report.add("save", save_gbps, "GB/s", base, b / save_disk_s / 1e9, fmt::format("median of {}{}", o.repeats, also));
  report.add("load", load_gbps, "GB/s", base, b / load_disk_s / 1e9, fmt::format("median of {}{}", o.repeats, also));
  report.add("disk write (bench io)", disk.write_gbps, "GB/s");
  report.add("disk read (bench io)", disk.read_gbps, "GB/s");
  report.add("disk copy (bench io)", disk.copy_gbps, "GB/s", "", std::nullopt, "read and written at once");
  report.add("training blocked by a save", save, "s", "one training step", step_s, "saves are synchronous");
  report.add_ratio("save_vs_disk", save_disk_s / save);
  if (nvme) report.add_ratio("save_vs_disk_one_way", one_way_s / save);
  report.add_ratio("load_vs_disk", load_disk_s / load);
  report.add_ratio("blocked_vs_step", save / step_s);
  return ok();
}

}  // namespace

void add_bench_ckpt(CLI::App& bench, int* exit_code) {
  auto* cmd = bench.add_subcommand("ckpt", "checkpoint save and load GB/s next to the disk's, and the time a save blocks training");
  auto o = std::make_shared<CkptOptions>();
  cmd->add_option("--model", o->model, "GPT size (tiny, gpt2, custom:LxHxA)");
  cmd->add_option("--offload", o->offload, "Where the optimizer state lives: cpu or nvme")->check(CLI::IsMember({"cpu", "nvme"}));
  cmd->add_option("--repeats", o->repeats, "Saves and loads; the median is reported")->check(CLI::Range(1, 100));
  cmd->add_option("--dir", o->dir, "Directory for the checkpoints (default: the current directory; not tmpfs)");
  cmd->add_flag("--json", o->json, "Print one JSON object");
  cmd->callback([o, exit_code] {
    fs::path base = o->dir.empty() ? fs::current_path() : fs::path(o->dir);
    std::string tmpl = (base / "strata-bench-ckpt-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) {
      fmt::print(stderr, "bench ckpt: cannot make a directory under {}\n", base.string());
      *exit_code = 1;
      return;
    }
    BenchReport report("ckpt");
    Status st = run(*o, tmpl, report);
    std::error_code ec;
    fs::remove_all(tmpl, ec);
    if (!st) {
      fmt::print(stderr, "bench ckpt: {}\n", st.error());
      *exit_code = 1;
      return;
    }
    report.print(o->json);
    *exit_code = 0;
  });
}

}  // namespace strata::cli
