// strata launch -n N [--] PROGRAM ARGS: run N local ranks of PROGRAM.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "commands.h"
#include "launcher.h"

namespace strata::cli {

void add_launch_command(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand("launch", "Start N local ranks of a program with torchrun-style environment");
  auto opts = std::make_shared<LaunchOptions>();
  cmd->add_option("-n,--nproc", opts->nproc, "Number of ranks")->check(CLI::Range(1, 1024))->required();
  cmd->add_option("--master-port", opts->master_port, "Port of rank 0's store (default: a free one)");
  // PROGRAM and everything after it are the program's, even if they look like ours:
  // parsing stops at the first positional, and the rest arrives in remaining().
  cmd->prefix_command();
  cmd->footer(
      "Each rank gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT.\n"
      "Output is prefixed [r<k>]. If a rank fails, the others are stopped and strata launch\n"
      "exits with the first failure's code. For several machines use torchrun instead:\n"
      "  torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend static --master_addr HOST \\\n"
      "           --master_port 29500 --node_rank K --no_python PROGRAM ARGS");
  cmd->callback([cmd, opts, exit_code] {
    opts->argv = cmd->remaining();
    for (const auto& a : trailing_args()) opts->argv.push_back(a);
    if (opts->argv.empty()) {
      fmt::print(stderr, "strata launch: no program given; usage: strata launch -n N [--] PROGRAM [ARGS...]\n");
      *exit_code = 2;
      return;
    }
    auto code = launch(*opts);
    if (!code) {
      fmt::print(stderr, "strata launch: {}\n", code.error());
      *exit_code = 2;
      return;
    }
    *exit_code = *code;
  });
}

}  // namespace strata::cli
