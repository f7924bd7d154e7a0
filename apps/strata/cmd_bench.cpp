// strata bench <what>: benchmarks that print every figure next to a baseline measured
// in the same run. Each benchmark lives in its own bench_<what>.cpp.
#include <CLI/CLI.hpp>

#include "commands.h"

namespace strata::cli {

CLI::App* add_bench_command(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks, each figure next to a baseline from the same run");
  bench->require_subcommand(1);
  return bench;
}

}  // namespace strata::cli
