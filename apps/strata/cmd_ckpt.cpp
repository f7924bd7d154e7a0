// strata ckpt inspect|verify|export|reshard: checkpoints without an engine or ranks.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in format.h before fmt 11)

#include "commands.h"
#include "strata/base/units.h"
#include "strata/ckpt/checkpoint.h"
#include "strata/ckpt/tools.h"
#include "strata/nn/models/gpt_config.h"

namespace strata::cli {
namespace {

namespace fs = std::filesystem;

int fail(const Error& e) {
  fmt::print(stderr, "strata ckpt: {}\n", e);
  return 1;
}

int inspect(const std::string& path) {
  auto dir = ckpt::resolve_checkpoint(path);
  if (!dir) return fail(dir.error());
  auto m = ckpt::read_meta(*dir);
  if (!m) return fail(m.error());
  std::int64_t params = 0, trainable = 0;
  for (const ckpt::ParamMeta& p : m->params) {
    params += p.numel;
    trainable += p.trainable ? p.numel : 0;
  }
  fmt::print("checkpoint   {}\n", dir->string());
  fmt::print("step         {} ({} optimizer steps applied)\n", m->step, m->optimizer_steps);
  fmt::print("saved by     {} rank{}, ZeRO stage {}, shards over {} rank{}\n", m->world, m->world == 1 ? "" : "s", m->stage,
             m->shard_world, m->shard_world == 1 ? "" : "s");
  fmt::print("model        {} parameters ({} trainable) in {} tensors, {} chunks; compute dtype {}\n", params, trainable,
             m->params.size(), m->chunks.size(), m->compute_dtype);
  fmt::print("optimizer    {} (state: {}), lr {:g}, loss scale {:g}\n", m->optimizer, fmt::join(m->state_names, ", "), m->lr,
             m->loss_scaler.scale);
  fmt::print("data files   {}, {} in all\n", m->files.size(), format_bytes(m->data_bytes()));
  for (const ckpt::FileMeta& f : m->files) fmt::print("  {:<18} {:>12}  {} records\n", f.name, format_bytes(f.sum.bytes), f.records.size());
  if (!m->client.empty()) fmt::print("client state {}\n", m->client.dump());
  return 0;
}

int verify(const std::string& path) {
  auto r = ckpt::verify_checkpoint(path);
  if (!r) return fail(r.error());
  int bad = 0;
  for (const auto& [name, st] : *r) {
    if (st) fmt::print("ok      {}\n", name);
    else fmt::print("FAILED  {}: {}\n", name, st.error()), ++bad;
  }
  if (bad) {
    fmt::print(stderr, "strata ckpt verify: {} of {} files failed\n", bad, r->size());
    return 1;
  }
  fmt::print("strata ckpt verify: every checksum matches ({} files and meta.json)\n", r->size());
  return 0;
}

}  // namespace

void add_ckpt_command(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand("ckpt", "Inspect, verify, export and reshard checkpoints");
  cmd->require_subcommand(1);
  auto path = std::make_shared<std::string>();

  auto* ins = cmd->add_subcommand("inspect", "Layout, step, sizes and world size of a checkpoint");
  ins->add_option("dir", *path, "A checkpoint (step-N) or a checkpoints directory (its latest)")->required();
  ins->callback([path, exit_code] { *exit_code = inspect(*path); });

  auto* ver = cmd->add_subcommand("verify", "Check every file of a checkpoint against its checksums");
  ver->add_option("dir", *path, "A checkpoint (step-N) or a checkpoints directory (its latest)")->required();
  ver->callback([path, exit_code] { *exit_code = verify(*path); });

  struct ExportArgs {
    std::string format = "safetensors", dtype = "bf16", names = "gpt2", out;
  };
  auto ex = std::make_shared<ExportArgs>();
  auto* exp = cmd->add_subcommand("export", "Consolidated weights as one safetensors file, one tensor at a time");
  exp->add_option("dir", *path, "A checkpoint (step-N) or a checkpoints directory (its latest)")->required();
  exp->add_option("--format", ex->format, "safetensors")->check(CLI::IsMember({"safetensors"}));
  exp->add_option("--dtype", ex->dtype, "bf16 (default) or fp32")->check(CLI::IsMember({"bf16", "fp32"}));
  exp->add_option("--names", ex->names, "gpt2: GPT-2's layout where it corresponds (default); saved: the names as saved")
      ->check(CLI::IsMember({"gpt2", "saved"}));
  exp->add_option("--out", ex->out, "The file to write")->required();
  exp->callback([path, ex, exit_code] {
    ckpt::ExportOptions o{.out = ex->out, .dtype = ex->dtype == "fp32" ? at::kFloat : at::kBFloat16};
    if (ex->names == "gpt2") {
      o.rename = [](const ckpt::ParamMeta& p) -> std::optional<ckpt::ExportName> {
        auto n = nn::gpt2_name(p.name);
        if (!n) return std::nullopt;
        return ckpt::ExportName{.name = n->name, .transpose = n->transpose};
      };
    }
    auto r = ckpt::export_safetensors(*path, o);
    if (!r) {
      *exit_code = fail(r.error());
      return;
    }
    fmt::print("wrote {}: {} tensors, {} ({})\n", ex->out, r->tensors, format_bytes(r->bytes), ex->dtype);
    *exit_code = 0;
  });

  auto world = std::make_shared<int>(1);
  auto out = std::make_shared<std::string>();
  auto* rs = cmd->add_subcommand("reshard", "Re-cut a checkpoint's shards for another world size, offline");
  rs->add_option("dir", *path, "A checkpoint (step-N) or a checkpoints directory (its latest)")->required();
  rs->add_option("--world", *world, "Shard ranks of the new checkpoint")->required()->check(CLI::Range(1, 1 << 20));
  rs->add_option("--out", *out, "The new checkpoints directory (gets step-N and latest)")->required();
  rs->callback([path, world, out, exit_code] {
    auto r = ckpt::reshard_checkpoint(*path, *world, *out);
    if (!r) {
      *exit_code = fail(r.error());
      return;
    }
    fmt::print("wrote {} for {} rank{}\n", r->string(), *world, *world == 1 ? "" : "s");
    *exit_code = 0;
  });
}

}  // namespace strata::cli
