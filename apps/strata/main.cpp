// strata: train models that do not fit in memory. See `strata --help`.
#include <CLI/CLI.hpp>

#include "commands.h"

int main(int argc, char** argv) {
  CLI::App app{"strata: sharded, tiered training of models that do not fit in memory", "strata"};
  app.set_version_flag("--version", std::string("strata ") + STRATA_VERSION);
  app.require_subcommand(1);
  int exit_code = 0;
  strata::cli::add_env_command(app, &exit_code);
  strata::cli::add_config_command(app, &exit_code);
  CLI::App* bench = strata::cli::add_bench_command(app);
  // benchmarks register here: strata::cli::add_bench_<what>(*bench, &exit_code);
  strata::cli::add_bench_io(*bench, &exit_code);
  CLI11_PARSE(app, argc, argv);
  return exit_code;
}
