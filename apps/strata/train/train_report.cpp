#include "train_report.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "strata/base/units.h"

namespace strata::cli {
namespace {

std::string b(std::uint64_t bytes) { return bytes == 0 ? "-" : format_bytes(bytes); }

constexpr const char* kKinds[] = {"params", "grads", "optimizer", "buffers"};

struct ShellResult {
  int exit_code = -1;
  std::string output;
};

ShellResult run_shell(const std::string& cmd) {
  ShellResult r;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) return r;
  char buf[4096];
  while (std::size_t n = std::fread(buf, 1, sizeof(buf), pipe)) r.output.append(buf, n);
  const int status = ::pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace

std::string format_duration(double seconds) {
  const auto s = static_cast<long>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60);
  return fmt::format("{}:{:02}", s / 60, s % 60);
}

void print_start(const StartInfo& s) {
  fmt::print("strata train: model {} ({} parameters: {} layers x {} hidden, {} heads), {} rank{}, ZeRO stage {}, {}\n",
             s.model, format_count(static_cast<std::uint64_t>(s.params)), s.layers, s.hidden, s.heads, s.world,
             s.world == 1 ? "" : "s", s.stage, s.precision);
  fmt::print("  data   {} ({} file{}, train {}, validation {})\n", s.data, s.data_files, s.data_files == 1 ? "" : "s",
             format_bytes(s.train_bytes), format_bytes(s.val_bytes));
  fmt::print("  run    {} steps x {} seq x {} tokens x {} micro-step{} x {} ranks = {} tokens/step; {}\n", s.steps,
             s.micro_batch, s.seq, s.grad_accum, s.grad_accum == 1 ? "" : "s", s.world,
             s.micro_batch * s.seq * s.grad_accum * s.world, s.optimizer);
  if (!s.autos.empty()) fmt::print("  auto   {}\n", fmt::join(s.autos, "; "));
  if (s.own_chunks == 0) {
    fmt::print("  chunks {} x {} elements ({:.1f}% padding); {}\n", s.chunks, format_count(s.chunk_elems),
               100 * s.padding, s.placement);
  } else {
    fmt::print("  chunks {} x {} elements and {} of one parameter each (up to {}), {:.1f}% padding; {}\n",
               s.chunks - s.own_chunks, format_count(s.chunk_elems), s.own_chunks, format_count(s.largest_chunk),
               100 * s.padding, s.placement);
  }
  fmt::print("\n  per rank     |  estimated: compute        host        nvme |   measured: compute        host        nvme\n");
  fmt::print("  -------------+---------------------------------------------+---------------------------------------------\n");
  for (std::size_t k = 0; k < 4; ++k) {
    const auto kind = static_cast<plan::StateKind>(k);
    fmt::print("  {:<12} | {:>19} {:>11} {:>11} | {:>19} {:>11} {:>11}\n", kKinds[k],
               b(s.estimate.at(plan::Tier::kCompute, kind)), b(s.estimate.at(plan::Tier::kHost, kind)),
               b(s.estimate.at(plan::Tier::kNvme, kind)), b(s.measured[0][k]), b(s.measured[1][k]), b(s.measured[2][k]));
  }
  std::uint64_t mt[3] = {};
  for (int t = 0; t < 3; ++t)
    for (int k = 0; k < 4; ++k) mt[t] += s.measured[t][k];
  fmt::print("  {:<12} | {:>19} {:>11} {:>11} | {:>19} {:>11} {:>11}\n", "total",
             b(s.estimate.tier_total(plan::Tier::kCompute)), b(s.estimate.tier_total(plan::Tier::kHost)),
             b(s.estimate.tier_total(plan::Tier::kNvme)), b(mt[0]), b(mt[1]), b(mt[2]));
  fmt::print("  (measured: what this rank holds after setup; gathered chunks and gradient buffers come and go)\n");
  fmt::print("  outputs in {}\n\n", s.out);
  std::fflush(stdout);
}

Progress::Progress(std::int64_t total_steps, bool tty)
    : total_(total_steps), tty_(tty), every_(std::max<std::int64_t>(1, total_steps / 20)) {}

bool Progress::stdout_is_tty() { return ::isatty(STDOUT_FILENO) != 0; }

void Progress::update(std::int64_t step, double loss, double tokens_per_s, double step_s,
                      const std::array<std::uint64_t, 3>& mem, std::optional<double> val_loss) {
  if (step > 0) {  // the first step records the trace and warms up; leave it out of the ETA
    elapsed_s_ += step_s;
    ++timed_;
  }
  const double eta = timed_ ? elapsed_s_ / timed_ * static_cast<double>(total_ - step - 1) : 0.0;
  std::string line = fmt::format("step {:>{}}/{} | loss {:.4f}{} | {} tok/s | ETA {} | mem compute {} host {} nvme {}",
                                 step + 1, fmt::formatted_size("{}", total_), total_, loss,
                                 val_loss ? fmt::format(" (val {:.4f})", *val_loss) : "", format_count(static_cast<std::uint64_t>(tokens_per_s)),
                                 format_duration(eta), b(mem[0]), b(mem[1]), b(mem[2]));
  if (tty_) {
    const std::size_t pad = last_len_ > line.size() ? last_len_ - line.size() : 0;
    fmt::print("\r{}{}", line, std::string(pad, ' '));
    last_len_ = line.size();
  } else if ((step + 1) % every_ == 0 || step + 1 == total_ || step == 0 || val_loss) {
    fmt::print("{}\n", line);
  }
  std::fflush(stdout);
}

void Progress::note(const std::string& line) {
  const std::size_t pad = tty_ && last_len_ > line.size() ? last_len_ - line.size() : 0;
  fmt::print("{}{}{}\n", tty_ ? "\r" : "", line, std::string(pad, ' '));
  last_len_ = 0;
  std::fflush(stdout);
}

void Progress::finish() {
  if (tty_) fmt::print("\n");
  std::fflush(stdout);
}

void print_end(const EndInfo& e) {
  fmt::print("\nstrata train: done in {} ({} steps)\n", format_duration(e.seconds), e.steps);
  fmt::print("  loss            {:.4f} -> {:.4f} (train, mean of the last steps){}\n", e.first_loss, e.train_loss,
             e.val_loss ? fmt::format(", validation {:.4f}", *e.val_loss) : "");
  fmt::print("  throughput      {} tokens/s (median step, all ranks)\n", format_count(static_cast<std::uint64_t>(e.tokens_per_s)));
  fmt::print("  peak memory     compute {}, host {}, nvme {} (rank 0); process peak RSS {} (rank 0, measured)\n",
             b(e.peak[0]), b(e.peak[1]), b(e.peak[2]), b(e.peak_rss));
  fmt::print("  bytes moved     network gather {}, reduce-scatter {}, all-reduce {}; host->compute {}, compute->host {}; "
             "nvme->host {}, host->nvme {} (rank 0, whole run)\n",
             b(e.moved.net_gather), b(e.moved.net_reduce_scatter), b(e.moved.net_all_reduce), b(e.moved.host_to_compute),
             b(e.moved.compute_to_host), b(e.moved.nvme_to_host), b(e.moved.host_to_nvme));
  if (e.hit_rate >= 0) fmt::print("  prefetch        {:.1f}% of gathers ready when needed\n", 100 * e.hit_rate);
  fmt::print("  outputs         {}\n", e.out);
  fmt::print("    metrics       {}\n", e.metrics);
  fmt::print("    trace         {}  (open in https://ui.perfetto.dev)\n", e.trace);
  fmt::print("    report        {}\n", e.report);
  fmt::print("    checkpoint    {}\n", e.checkpoint);
  if (!e.sample.empty()) fmt::print("\nsample from the model:\n{}\n", e.sample);
  std::fflush(stdout);
}

std::string render_report(const std::string& out_dir) {
  const std::string script = std::string(STRATA_SOURCE_DIR) + "/scripts/plot_report.py";
  if (!std::filesystem::exists(script)) return "scripts/plot_report.py not found";
  const std::string cmd = fmt::format("/usr/bin/python3 '{}' '{}/metrics.jsonl' '{}/report.png' 2>&1", script, out_dir, out_dir);
  auto r = run_shell(cmd);
  if (r.exit_code != 0) return fmt::format("plot_report.py failed ({}): {}", r.exit_code, r.output);
  return {};
}

}  // namespace strata::cli
