// What `strata train` shows (rank 0): the start summary, the live progress line, and
// the end summary; and the report image rendered from metrics.jsonl.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "strata/plan/estimator.h"
#include "strata/plan/schedule.h"

namespace strata::cli {

using TierKindBytes = std::array<std::array<std::uint64_t, 4>, 3>;

struct StartInfo {
  std::string model;          // "tiny"
  std::int64_t params = 0;
  std::int64_t layers = 0, hidden = 0, heads = 0;
  int world = 1;
  int stage = 0;
  std::string precision;      // "bf16"
  std::string data;           // path
  std::size_t data_files = 0;
  std::uint64_t train_bytes = 0, val_bytes = 0;
  std::int64_t steps = 0, micro_batch = 0, grad_accum = 0, seq = 0;
  std::string optimizer;      // "AdamW lr 3e-3 (warmup 30, cosine to 3e-4)"
  plan::MemoryEstimate estimate;
  TierKindBytes measured{};
  std::size_t chunks = 0;
  std::uint64_t chunk_elems = 0;
  std::size_t own_chunks = 0;        // oversized and private chunks: one parameter each
  std::uint64_t largest_chunk = 0;
  double padding = 0;
  std::string placement;      // human-readable
  std::vector<std::string> autos;  // the config's "auto" keys as resolved (config_auto.h)
  std::string out;
};
void print_start(const StartInfo& s);

// One line redrawn in place on a terminal; plain lines every `every` steps otherwise.
class Progress {
 public:
  Progress(std::int64_t total_steps, bool tty);
  void update(std::int64_t step, double loss, double tokens_per_s, double step_s,
              const std::array<std::uint64_t, 3>& mem, std::optional<double> val_loss);
  // A line of its own between progress lines (on a terminal, over the current one).
  void note(const std::string& line);
  void finish();
  static bool stdout_is_tty();

 private:
  std::int64_t total_;
  bool tty_;
  std::int64_t every_;
  double elapsed_s_ = 0;
  std::int64_t timed_ = 0;
  std::size_t last_len_ = 0;
};

struct EndInfo {
  double train_loss = 0, first_loss = 0;
  std::optional<double> val_loss;
  double tokens_per_s = 0;
  double seconds = 0;
  std::array<std::uint64_t, 3> peak{};
  std::uint64_t peak_rss = 0;  // this process's, measured (getrusage)
  plan::LinkBytes moved;        // over the whole run, this rank
  std::int64_t steps = 0;
  double hit_rate = 0;          // over the scheduled steps; < 0 when not applicable
  std::string out, metrics, trace, report, checkpoint;
  std::string sample;
};
void print_end(const EndInfo& e);

// Renders out/report.png from out/metrics.jsonl with scripts/plot_report.py (Debian's
// python3-matplotlib). Returns the error text, or empty on success.
std::string render_report(const std::string& out_dir);

std::string format_duration(double seconds);

}  // namespace strata::cli
