// Subcommands of the `strata` tool. Each add_* function registers one subcommand on
// the app; when it runs, it stores its process exit code in *exit_code.
#pragma once

namespace CLI {
class App;
}

namespace strata::cli {

void add_env_command(CLI::App& app, int* exit_code);
void add_config_command(CLI::App& app, int* exit_code);
// Registers `strata bench` and returns it, so each benchmark can add itself.
CLI::App* add_bench_command(CLI::App& app);
// strata bench io: swap store throughput next to fio (bench_io.cpp).
void add_bench_io(CLI::App& bench, int* exit_code);

}  // namespace strata::cli
