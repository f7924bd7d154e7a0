#include "bench_report.h"

#include <algorithm>

#include <fmt/format.h>

namespace strata::cli {

void BenchReport::add(std::string name, double value, std::string unit, std::string baseline,
                      std::optional<double> baseline_value, std::string note) {
  figures_[name] = value;
  rows_.push_back(Row{std::move(name), std::move(unit), std::move(baseline), std::move(note), value, baseline_value});
}

void BenchReport::add_ratio(const std::string& key, double value) { ratios_[key] = value; }

nlohmann::json BenchReport::to_json() const {
  nlohmann::json rows = nlohmann::json::array();
  for (const Row& r : rows_) {
    nlohmann::json row = {{"name", r.name}, {"value", r.value}, {"unit", r.unit}};
    if (!r.baseline.empty()) row["baseline"] = r.baseline;
    if (r.baseline_value) {
      row["baseline_value"] = *r.baseline_value;
      row["ratio"] = *r.baseline_value != 0 ? r.value / *r.baseline_value : 0.0;
    }
    if (!r.note.empty()) row["note"] = r.note;
    rows.push_back(std::move(row));
  }
  nlohmann::json doc = {{"bench", name_}, {"config", config_}, {"rows", rows}, {"figures", figures_}, {"ratios", ratios_}};
  if (!skipped_.empty()) doc["skipped"] = skipped_;
  return doc;
}

void BenchReport::print(bool json) const {
  if (json) {
    fmt::print("{}\n", to_json().dump(2));
    return;
  }
  fmt::print("strata bench {}  {}\n\n", name_, config_.dump());
  std::size_t w = 8;
  for (const Row& r : rows_) w = std::max(w, r.name.size());
  fmt::print("  {:<{}}  {:>12}  {:<8}  {:<22} {:>12}  {:>7}\n", "figure", w, "value", "unit", "baseline", "value",
             "ratio");
  for (const Row& r : rows_) {
    std::string base = r.baseline_value ? fmt::format("{:>12.3f}", *r.baseline_value) : fmt::format("{:>12}", "");
    std::string ratio = r.baseline_value && *r.baseline_value != 0 ? fmt::format("{:>6.2f}x", r.value / *r.baseline_value)
                                                                   : fmt::format("{:>7}", "");
    fmt::print("  {:<{}}  {:>12.3f}  {:<8}  {:<22} {}  {}{}\n", r.name, w, r.value, r.unit, r.baseline, base, ratio,
               r.note.empty() ? "" : "  " + r.note);
  }
  if (!ratios_.empty()) {
    fmt::print("\n  ratios:\n");
    for (const auto& [k, v] : ratios_.items()) fmt::print("    {:<40} {:.3f}\n", k, v.get<double>());
  }
  if (!skipped_.empty()) {
    fmt::print("\n  not measured:\n");
    for (const auto& [k, v] : skipped_.items()) fmt::print("    {}: {}\n", k, v.get<std::string>());
  }
}

double median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

double median_seconds(int warmup, int repeats, const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> t;
  for (int i = 0; i < std::max(1, repeats); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return median(std::move(t));
}

}  // namespace strata::cli
