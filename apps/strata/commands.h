// Subcommands of the `strata` tool. Each add_* function registers one subcommand on
// the app; when it runs, it stores its process exit code in *exit_code.
#pragma once

namespace CLI {
class App;
}

#include <string>
#include <vector>

namespace strata::cli {

// The arguments after the first "--" on the command line (not seen by CLI11).
const std::vector<std::string>& trailing_args();
// Every argument after the program name, as given (to start ranks of this command).
const std::vector<std::string>& original_args();

void add_env_command(CLI::App& app, int* exit_code);
void add_config_command(CLI::App& app, int* exit_code);
void add_launch_command(CLI::App& app, int* exit_code);
void add_train_command(CLI::App& app, int* exit_code);
// strata ckpt inspect|verify|export|reshard (strata/ckpt/tools.h).
void add_ckpt_command(CLI::App& app, int* exit_code);
// strata estimate: per-rank memory per tier (strata/plan/estimator.h).
void add_estimate_command(CLI::App& app, int* exit_code);
// Registers `strata bench` and returns it, so each benchmark can add itself.
CLI::App* add_bench_command(CLI::App& app);
void add_bench_zero(CLI::App& bench, int* exit_code);
void add_bench_zero3(CLI::App& bench, int* exit_code);
void add_bench_train(CLI::App& bench, int* exit_code);
void add_bench_python(CLI::App& bench, int* exit_code);
void add_bench_infinity(CLI::App& bench, int* exit_code);
// strata bench ckpt: checkpoint save and load GB/s next to bench io (bench_ckpt.cpp).
void add_bench_ckpt(CLI::App& bench, int* exit_code);
// `strata bench optim`: the fused optimizer kernels vs the memory roofline and torch::optim.
void add_bench_optim(CLI::App& bench, int* exit_code);
// strata bench io: swap store throughput next to fio (bench_io.cpp).
void add_bench_io(CLI::App& bench, int* exit_code);

}  // namespace strata::cli
