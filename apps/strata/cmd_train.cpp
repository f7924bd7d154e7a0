// strata train: a GPT trained across ranks with sharding and offload.
//
// Started by a user (no RANK in the environment) with -n N > 1, it checks the options,
// creates the run directory and starts N ranks of itself through the launcher, rank 0
// writing straight to the terminal so the progress line stays live. Under torchrun or
// strata launch (RANK set), or with -n 1, the process is one rank and trains.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <set>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "commands.h"
#include "interrupt.h"
#include "launcher.h"
#include "rank_threads.h"
#include "strata/base/log.h"
#include "strata/comm/rendezvous.h"
#include "strata/io/swap_store.h"
#include "train/launch_checks.h"
#include "train/train_options.h"
#include "train/trainer.h"

namespace strata::cli {
namespace {

// The world the run will have: -n when strata train launches the ranks itself, the
// launcher's WORLD_SIZE in a rank it started (torchrun, strata launch).
int planned_world(const TrainOptions& o, bool is_rank) {
  if (!is_rank) return o.nproc;
  const char* w = std::getenv("WORLD_SIZE");
  return w != nullptr ? std::atoi(w) : 1;
}

// A rank that was killed cannot remove its swap files; once every rank has exited, the
// launching process removes what the dead ones left (io::remove_abandoned_swap). A run
// whose config names no job (each rank then picks its own) is not found this way.
void remove_abandoned_swap_files(const Config& c) {
  if (c.strata.job_name.empty()) return;
  std::set<std::string> paths;
  const auto& z = c.zero_optimization;
  if (z.offload_optimizer.device == OffloadDevice::kNvme) paths.insert(z.offload_optimizer.nvme_path);
  if (z.offload_param.device == OffloadDevice::kNvme) paths.insert(z.offload_param.nvme_path);
  for (const std::string& path : paths) {
    auto removed = io::remove_abandoned_swap(path, c.strata.job_name);
    if (!removed) {
      fmt::print(stderr, "strata train: could not remove the swap files of failed ranks: {}\n", removed.error());
    } else if (!removed->empty()) {
      fmt::print(stderr, "strata train: removed {} swap file(s) that failed ranks left in {}\n", removed->size(), path);
    }
  }
}

int train_main(TrainOptions& o, bool explicit_out) {
  const bool is_rank = std::getenv("RANK") != nullptr;
  if (auto st = o.resolve(/*demo_defaults=*/true); !st) {
    fmt::print(stderr, "strata train: {}\n", st.error());
    return 2;
  }
  // The batch triple depends on the world size, which is known here: an inconsistent one
  // fails once, before the run directory is made or any rank starts.
  if (auto st = o.config.resolve_batch(planned_world(o, is_rank)); !st) {
    fmt::print(stderr, "strata train: {}\n", st.error());
    return 2;
  }
  if (!is_rank && !o.config_path.empty()) {
    // One set of defaults per run, said out loud: a config replaces the demo's.
    const Config& c = o.config;
    fmt::print(stderr,
               "strata train: note: with --config, what the config and the flags leave out takes DeepSpeed's "
               "defaults (here ZeRO stage {}, {}, optimizer state {}), not the demo's (stage 3, bf16, optimizer state "
               "on nvme, parameters on host)\n",
               c.zero_optimization.stage, c.bf16.enabled ? "bf16" : c.fp16.enabled ? "fp16" : "fp32",
               c.zero_optimization.offload_optimizer.device == OffloadDevice::kNone
                   ? "on compute"
                   : fmt::format("on {}", to_string(c.zero_optimization.offload_optimizer.device)));
  }
  if (!is_rank) {
    if (auto st = check_machine_fits(o); !st) {
      fmt::print(stderr, "strata train: {}\n", st.error());
      return 2;
    }
  }
  if (auto st = prepare_out_dir(o); !st) {
    fmt::print(stderr, "strata train: {}\n", st.error());
    return 2;
  }
  std::error_code ec;
  std::filesystem::create_directories(o.out, ec);
  if (ec) {
    fmt::print(stderr, "strata train: cannot create {}: {}\n", o.out, ec.message());
    return 2;
  }
  if (!is_rank && o.nproc > 1) {
    auto self = self_exe();
    if (!self) {
      fmt::print(stderr, "strata train: {}\n", self.error());
      return 2;
    }
    LaunchOptions lo;
    lo.nproc = o.nproc;
    lo.argv = {*self};
    for (const auto& a : original_args()) lo.argv.push_back(a);
    // Every rank must write to the same run directory.
    if (!explicit_out) lo.argv.insert(lo.argv.end(), {"--out", o.out});
    lo.rank0_passthrough = true;
    auto code = launch(lo);
    remove_abandoned_swap_files(o.config);
    if (!code) {
      fmt::print(stderr, "strata train: {}\n", code.error());
      return 2;
    }
    return *code;
  }
  // One rank: quiet unless rank 0, threads shared with the other local ranks; it stops
  // at the end of a step on Ctrl-C or SIGTERM, and dies with its launcher.
  install_rank_signal_handlers(/*die_with_parent=*/is_rank);
  apply_rank_threads();
  comm::CommOptions co;
  co.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(o.config.strata.comm_timeout_s * 1000));
  auto comm = comm::init_from_env(co);
  if (!comm) {
    fmt::print(stderr, "strata train: {}\n", comm.error());
    return 1;
  }
  if ((*comm)->rank() != 0 && log::level() < log::Level::kWarn) log::set_level(log::Level::kWarn);
  if ((*comm)->world() != planned_world(o, is_rank)) {
    fmt::print(stderr, "strata train: the world has {} ranks, but the batch was resolved for {}\n", (*comm)->world(),
               planned_world(o, is_rank));
    return 2;
  }
  if (auto st = run_training(o, **comm); !st) {
    fmt::print(stderr, "strata train: rank {}: {}\n", (*comm)->rank(), st.error());
    return 1;
  }
  if (const int sig = stop_signal(); sig != 0) return 128 + sig;
  return 0;
}

}  // namespace

void add_train_command(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand("train", "Train a GPT on a text corpus across ranks, with sharding and offload");
  auto o = std::make_shared<TrainOptions>();
  add_train_flags(*cmd, *o);
  cmd->callback([cmd, o, exit_code] { *exit_code = train_main(*o, cmd->count("--out") > 0); });
}

}  // namespace strata::cli
