// What every `strata bench ...` prints: each figure next to its baseline, measured in
// the same run, and the ratio between them; or the same as one JSON object (--json).
//
//   BenchReport report("optim");
//   report.set_config("elements", n);
//   report.add("adamw fp32", strata_gbps, "GB/s", "roofline", roofline_gbps);
//   report.add_ratio("adamw_fp32_vs_roofline", strata_gbps / roofline_gbps);
//   report.print(json_output);
//
// JSON shape: {"bench": name, "config": {...}, "rows": [{"name", "value", "unit",
// "baseline", "baseline_value", "ratio"}...], "figures": {name: value}, "ratios": {key: value}},
// and "skipped": {name: reason} when a measurement could not be made.
// Timing helpers take medians over repeats, because the machines are shared and noisy.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace strata::cli {

class BenchReport {
 public:
  explicit BenchReport(std::string name) : name_(std::move(name)) {}

  template <class T>
  void set_config(const std::string& key, const T& value) { config_[key] = value; }

  // A figure with no baseline (baseline empty) prints without a ratio.
  void add(std::string name, double value, std::string unit, std::string baseline = {},
           std::optional<double> baseline_value = std::nullopt, std::string note = {});
  // A named ratio for scripts (the `ratios` map); also printed in the table's footer.
  void add_ratio(const std::string& key, double value);
  void add_figure(const std::string& key, double value) { figures_[key] = value; }
  // A measurement the run could not make, and why (the `skipped` map; a line under the table).
  void add_skipped(const std::string& name, const std::string& reason) { skipped_[name] = reason; }

  nlohmann::json to_json() const;
  // A table on stdout, or to_json() when json is true.
  void print(bool json) const;

 private:
  struct Row {
    std::string name, unit, baseline, note;
    double value = 0;
    std::optional<double> baseline_value;
  };
  std::string name_;
  nlohmann::json config_ = nlohmann::json::object();
  nlohmann::json figures_ = nlohmann::json::object();
  nlohmann::json ratios_ = nlohmann::json::object();
  nlohmann::json skipped_ = nlohmann::json::object();
  std::vector<Row> rows_;
};

// Runs fn `repeats` times after `warmup` runs and returns the median wall time in seconds.
double median_seconds(int warmup, int repeats, const std::function<void()>& fn);
double median(std::vector<double> values);

}  // namespace strata::cli
