// strata config check FILE: validate a config and print its normalized form.
// strata config keys [--markdown|--json]: every key the schema knows.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "config_auto.h"
#include "strata/base/config.h"

namespace strata::cli {

void add_config_command(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand("config", "Work with config files");
  cmd->require_subcommand(1);
  auto* check = cmd->add_subcommand("check", "Validate a config file and print it normalized, with defaults");
  auto path = std::make_shared<std::string>();
  check->add_option("file", *path, "JSON config (DeepSpeed vocabulary plus a strata section)")->required();
  check->callback([path, exit_code] {
    std::vector<std::string> warnings;
    auto cfg = Config::load(*path, &warnings);
    for (const auto& w : warnings) fmt::print(stderr, "warning: {}\n", w);
    if (!cfg) {
      fmt::print(stderr, "error: {}\n", cfg.error());
      *exit_code = 1;
      return;
    }
    fmt::print("{}\n", cfg->to_json().dump(2));
    // strata's default for everything but the batch keys, which the world size decides.
    for (const auto& line : describe_auto(*path, *cfg)) fmt::print(stderr, "auto: {}\n", line);
    fmt::print(stderr, "{}: ok ({} warning{})\n", *path, warnings.size(), warnings.size() == 1 ? "" : "s");
    *exit_code = 0;
  });

  auto* keys = cmd->add_subcommand("keys", "List every config key with its type, default and status");
  auto markdown = std::make_shared<bool>(false);
  auto json = std::make_shared<bool>(false);
  auto* md_flag = keys->add_flag("--markdown", *markdown, "Print a Markdown table (as in docs/config.md)");
  keys->add_flag("--json", *json, "Print one JSON array: {path, type, default, range, status, note} per key")
      ->excludes(md_flag);
  keys->callback([markdown, json, exit_code] {
    if (*json) {
      // For tools: default is the JSON value (null for keys strata only recognises).
      nlohmann::json out = nlohmann::json::array();
      for (const auto& k : config_keys()) {
        out.push_back({{"path", k.path}, {"type", k.type},
                       {"default", k.default_value.empty() ? nlohmann::json() : nlohmann::json::parse(k.default_value)},
                       {"range", k.range}, {"status", k.status}, {"note", k.note}});
      }
      fmt::print("{}\n", out.dump(2));
    } else if (*markdown) {
      fmt::print("{}", config_keys_markdown());
    } else {
      for (const auto& k : config_keys()) {
        fmt::print("{:<58} {:<10} {:<14} {}\n", k.path, k.type.size() > 10 ? "enum" : k.type,
                   k.default_value.empty() ? "-" : k.default_value, k.status);
      }
    }
    *exit_code = 0;
  });
}

}  // namespace strata::cli
