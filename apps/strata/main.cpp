// strata: train models that do not fit in memory. See `strata --help`.
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

#include "commands.h"
#include "strata/base/fatal_signal.h"

namespace strata::cli {
namespace {
std::vector<std::string> g_trailing;
std::vector<std::string> g_original;
}
const std::vector<std::string>& trailing_args() { return g_trailing; }
const std::vector<std::string>& original_args() { return g_original; }
}  // namespace strata::cli

int main(int argc, char** argv) {
  // Note [fatal signal report]: a crash says where, or who sent it, before the process
  // dies of it (every rank and bench worker is this program too).
  strata::install_fatal_signal_report("strata");
  strata::cli::g_original.assign(argv + 1, argv + argc);
  // Everything after the first "--" belongs to a program strata starts (strata launch
  // -n 2 -- prog --its-flags); CLI11 only sees what comes before it.
  for (int i = 1; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--") {
      strata::cli::g_trailing.assign(argv + i + 1, argv + argc);
      argc = i;
      break;
    }
  }
  CLI::App app{"strata: sharded, tiered training of models that do not fit in memory", "strata"};
  app.set_version_flag("--version", std::string("strata ") + STRATA_VERSION);
  app.require_subcommand(1);
  int exit_code = 0;
  strata::cli::add_env_command(app, &exit_code);
  strata::cli::add_config_command(app, &exit_code);
  strata::cli::add_launch_command(app, &exit_code);
  strata::cli::add_train_command(app, &exit_code);
  strata::cli::add_ckpt_command(app, &exit_code);
  strata::cli::add_estimate_command(app, &exit_code);
  CLI::App* bench = strata::cli::add_bench_command(app);
  strata::cli::add_bench_zero(*bench, &exit_code);
  strata::cli::add_bench_zero3(*bench, &exit_code);
  strata::cli::add_bench_train(*bench, &exit_code);
  strata::cli::add_bench_python(*bench, &exit_code);
  strata::cli::add_bench_infinity(*bench, &exit_code);
  strata::cli::add_bench_ckpt(*bench, &exit_code);
  strata::cli::add_bench_optim(*bench, &exit_code);
  strata::cli::add_bench_io(*bench, &exit_code);
  // Exit codes (docs/reliability.md): 0 done; 1 a failure while working (I/O, a peer, the
  // numbers); 2 bad input found before any work (flags, config, data); 128+N stopped by
  // signal N. CLI11's own codes (105, 109, ...) are folded into 2; --help and
  // --version exit 0.
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return exit_code;
}
