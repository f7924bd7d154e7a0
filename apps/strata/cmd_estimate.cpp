// strata estimate: per-rank memory of model state in each tier, before training.
//
//   strata estimate --params 7e9 --largest-layer 2e8 --world 8 --stage 3 --offload-optimizer nvme
//   strata estimate --model gpt:48x1600 --world 4 --stage 3 --bf16 --json
//   strata estimate --params 13e9 --stage 3 --offload-param cpu --offload-optimizer nvme --bf16
//                   --bf16-state --bf16-grads   (strata.optimizer_state_dtype, gradient_shard_dtype)
//   strata estimate --params 7e9 --stage 2 --offload-optimizer cpu --optimizer lion
//
// The numbers come from plan::estimate_memory (strata/plan/estimator.h); DeepSpeed's
// published estimate is printed beside them where DeepSpeed has one.
#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "strata/base/config.h"
#include "strata/base/units.h"
#include "strata/plan/chunking.h"
#include "strata/plan/estimator.h"

namespace strata::cli {
namespace {

struct EstimateArgs {
  std::string params;
  std::string largest_layer;
  std::string model;
  int world = 1;
  int gpus_per_node = 0;
  int stage = 3;
  std::string offload_optimizer = "none";
  std::string offload_param = "none";
  bool bf16 = false;
  bool fp16 = false;
  bool fp32 = false;
  std::string optimizer = "adamw";  // whose state tensors are counted (lower case: --optimizer's transform)
  bool bf16_state = false;  // strata.optimizer_state_dtype bf16
  bool bf16_grads = false;  // strata.gradient_shard_dtype bf16
  bool json = false;
};

OffloadDevice device_of(const std::string& s) {
  return s == "cpu" ? OffloadDevice::kCpu : s == "nvme" ? OffloadDevice::kNvme : OffloadDevice::kNone;
}

// --optimizer's value (lower case: its transform) as a config's optimizer type.
OptimizerType optimizer_type(const std::string& s) {
  if (s == "adam") return OptimizerType::kAdam;
  if (s == "sgd") return OptimizerType::kSGD;
  if (s == "adagrad") return OptimizerType::kAdagrad;
  if (s == "lion") return OptimizerType::kLion;
  if (s == "lamb") return OptimizerType::kLamb;
  return OptimizerType::kAdamW;
}

// What the model's chunk layout adds, when the model's parameter sizes are known.
struct ChunkInfo {
  std::uint64_t chunk_elems = 0;
  std::uint64_t n_chunks = 0;
  std::uint64_t padding_elems = 0;
  double waste_ratio = 0;
};

Result<plan::EstimateInput> build_input(const EstimateArgs& a, std::optional<ChunkInfo>* chunks) {
  plan::EstimateInput in;
  if (a.params.empty() == a.model.empty())
    return make_error(ErrorCode::kInvalidArgument, "give exactly one of --params and --model");
  in.world = a.world;
  in.gpus_per_node = a.gpus_per_node;
  in.stage = a.stage;
  in.dtype = a.fp32 ? plan::Dtype::kFp32 : a.bf16 ? plan::Dtype::kBf16 : plan::Dtype::kFp16;
  in.offload_optimizer = device_of(a.offload_optimizer);
  in.offload_param = device_of(a.offload_param);
  // The optimizer's own count (OptimizerConfig::state_tensors), SGD's with its momentum
  // buffer (without momentum it keeps none: 4 bytes a parameter fewer).
  OptimizerConfig oc;
  oc.type = optimizer_type(a.optimizer);
  oc.momentum = 0.9;
  in.optimizer_states = oc.state_tensors();
  in.bf16_optimizer_states = a.bf16_state;
  in.bf16_gradient_shards = a.bf16_grads;
  if (!a.params.empty()) {
    STRATA_ASSIGN_OR_RETURN(in.n_params, parse_size(a.params));
  } else {
    STRATA_ASSIGN_OR_RETURN(plan::ModelShape shape, plan::parse_model_spec(a.model));
    in.n_params = shape.n_params;
    in.largest_layer_params = shape.largest_layer_params;
    // Lay the model out in chunks as the engine would: 4 KiB I/O alignment, Gemini's
    // search in steps of the hidden size.
    std::vector<plan::ParamInfo> params;
    for (std::uint64_t n : shape.param_sizes) params.push_back({.numel = n});
    const plan::ChunkingOptions opt{.world = a.world,
                                    .io_align_elems = 4096 / plan::dtype_bytes(in.dtype),
                                    .search_range_elems = StrataConfig{}.chunk_search_range,
                                    .search_step_elems = shape.hidden};
    STRATA_ASSIGN_OR_RETURN(plan::ChunkLayout layout, plan::pack_chunks(params, {}, opt));
    in.padded_params = layout.capacity_elems;
    in.chunk_elems = layout.chunk_size_elems;
    *chunks = ChunkInfo{layout.chunk_size_elems, layout.chunks.size(), layout.padding_elems, layout.waste_ratio};
  }
  if (!a.largest_layer.empty()) {
    STRATA_ASSIGN_OR_RETURN(in.largest_layer_params, parse_size(a.largest_layer));
  }
  STRATA_RETURN_IF_ERROR(in.validate());
  return in;
}

void print_table(const plan::EstimateInput& in, const plan::MemoryEstimate& e, const plan::DeepSpeedEstimate& ds,
                 const std::optional<ChunkInfo>& chunks, const std::string& model) {
  const int per_node = in.gpus_per_node == 0 ? in.world : in.gpus_per_node;
  fmt::print("strata estimate: {}{} params, world {} ({} per node), ZeRO stage {}, {}\n",
             model.empty() ? "" : model + ", ", format_count(in.n_params), in.world, per_node, in.stage,
             plan::to_string(in.dtype));
  fmt::print("offload: optimizer {}, params {}; optimizer state {} ({} tensor{} a parameter), gradient shards {}",
             to_string(in.offload_optimizer), to_string(in.offload_param), in.bf16_optimizer_states ? "bf16" : "fp32",
             in.optimizer_states, in.optimizer_states == 1 ? "" : "s", in.bf16_gradient_shards ? "bf16" : "fp32");
  if (in.largest_layer_params > 0) fmt::print("; largest layer {} params", format_count(in.largest_layer_params));
  fmt::print("\n");
  if (chunks)
    fmt::print("chunks: {} of {} elements, padding {} elements ({:.2f}% waste)\n", chunks->n_chunks,
               format_count(chunks->chunk_elems), format_count(chunks->padding_elems), 100 * chunks->waste_ratio);
  if (in.stage == 3 && e.working_set_elems == 0)
    fmt::print("note: the largest layer is unknown, so the gathered working set is not counted; "
               "pass --largest-layer or --model\n");
  fmt::print("\nper rank   {:>11} {:>11} {:>11} {:>11} {:>11}\n", "params", "grads", "optimizer", "buffers", "total");
  for (plan::Tier t : plan::kAllTiers) {
    fmt::print("{:<10}", plan::to_string(t));
    for (plan::StateKind k : plan::kAllStateKinds) fmt::print(" {:>11}", format_bytes(e.at(t, k)));
    fmt::print(" {:>11}\n", format_bytes(e.tier_total(t)));
  }
  fmt::print("{:<10}", "total");
  for (plan::StateKind k : plan::kAllStateKinds) fmt::print(" {:>11}", format_bytes(e.kind_total(k)));
  fmt::print(" {:>11}\n", format_bytes(e.total()));
  if (ds.applicable) {
    fmt::print("\nDeepSpeed {} ({}buffer factor 1.5{}):\n", ds.function, in.stage == 3 ? "zero_init, " : "",
               in.offload_optimizer == OffloadDevice::kNvme || in.offload_param == OffloadDevice::kNvme
                   ? "; nvme counted as cpu"
                   : "");
    fmt::print("  per GPU  {:>11}   strata compute per rank {}\n", format_bytes(ds.gpu_bytes),
               format_bytes(e.tier_total(plan::Tier::kCompute)));
    fmt::print("  per node {:>11}   strata host per node    {}\n", format_bytes(ds.cpu_bytes),
               format_bytes(e.tier_total(plan::Tier::kHost) * static_cast<std::uint64_t>(per_node)));
  }
}

nlohmann::json to_json(const plan::EstimateInput& in, const plan::MemoryEstimate& e, const plan::DeepSpeedEstimate& ds,
                       const std::optional<ChunkInfo>& chunks) {
  nlohmann::json tiers = nlohmann::json::object();
  for (plan::Tier t : plan::kAllTiers) {
    nlohmann::json kinds = nlohmann::json::object();
    for (plan::StateKind k : plan::kAllStateKinds) kinds[std::string(plan::to_string(k))] = e.at(t, k);
    kinds["total"] = e.tier_total(t);
    tiers[std::string(plan::to_string(t))] = kinds;
  }
  nlohmann::json out = {
      {"inputs",
       {{"params", in.n_params}, {"padded_params", in.padded_params == 0 ? in.n_params : in.padded_params},
        {"largest_layer", in.largest_layer_params}, {"world", in.world},
        {"gpus_per_node", in.gpus_per_node == 0 ? in.world : in.gpus_per_node}, {"stage", in.stage},
        {"dtype", plan::to_string(in.dtype)}, {"offload_optimizer", to_string(in.offload_optimizer)},
        {"offload_param", to_string(in.offload_param)},
        {"optimizer_state_dtype", in.bf16_optimizer_states ? "bf16" : "fp32"},
        {"optimizer_states", in.optimizer_states},
        {"gradient_shard_dtype", in.bf16_gradient_shards ? "bf16" : "fp32"}}},
      {"tiers", tiers},
      {"total", e.total()},
  };
  out["deepspeed"] = ds.applicable ? nlohmann::json{{"function", ds.function}, {"gpu_bytes", ds.gpu_bytes},
                                                    {"cpu_bytes_per_node", ds.cpu_bytes}}
                                   : nlohmann::json(nullptr);
  if (chunks)
    out["chunks"] = {{"chunk_elems", chunks->chunk_elems}, {"count", chunks->n_chunks},
                     {"padding_elems", chunks->padding_elems}, {"waste_ratio", chunks->waste_ratio}};
  return out;
}

int run_estimate(const EstimateArgs& a) {
  std::optional<ChunkInfo> chunks;
  auto in = build_input(a, &chunks);
  if (!in) {
    fmt::print(stderr, "strata estimate: {}\n", in.error());
    return 1;
  }
  auto e = plan::estimate_memory(*in);
  auto ds = plan::deepspeed_estimate(*in);
  if (!e || !ds) {
    fmt::print(stderr, "strata estimate: {}\n", e ? ds.error() : e.error());
    return 1;
  }
  if (a.json) fmt::print("{}\n", to_json(*in, *e, *ds, chunks).dump(2));
  else print_table(*in, *e, *ds, chunks, a.model);
  return 0;
}

}  // namespace

void add_estimate_command(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<EstimateArgs>();
  auto* cmd = app.add_subcommand("estimate", "Predict per-rank memory of params, grads and optimizer state per tier");
  cmd->add_option("--params", args->params, "Parameter count: 7e9, 1.3G, 350M");
  cmd->add_option("--model", args->model, "Derive parameter sizes from a model: gpt:<layers>x<hidden>");
  cmd->add_option("--largest-layer", args->largest_layer, "Parameters of the largest layer (ZeRO-3 working set)");
  cmd->add_option("--world", args->world, "Data-parallel ranks")->check(CLI::PositiveNumber);
  cmd->add_option("--gpus-per-node", args->gpus_per_node, "Ranks per node (default: all on one node)");
  cmd->add_option("--stage", args->stage, "ZeRO stage")->check(CLI::Range(0, 3));
  cmd->add_option("--offload-optimizer", args->offload_optimizer, "Optimizer state tier")
      ->check(CLI::IsMember({"none", "cpu", "nvme"}));
  cmd->add_option("--offload-param", args->offload_param, "Parameter shard tier (stage 3)")
      ->check(CLI::IsMember({"none", "cpu", "nvme"}));
  auto* bf16 = cmd->add_flag("--bf16", args->bf16, "bf16 compute copy, fp32 master (mixed precision)");
  auto* fp16 = cmd->add_flag("--fp16", args->fp16, "fp16 compute copy, fp32 master (the default)");
  auto* fp32 = cmd->add_flag("--fp32", args->fp32, "fp32 only, no master copy");
  bf16->excludes(fp16)->excludes(fp32);
  fp16->excludes(fp32);
  cmd->add_option("--optimizer", args->optimizer,
                  "Whose state is counted: AdamW, Adam (the default) or Lamb (m and v), Lion, Adagrad, SGD (one tensor; "
                  "SGD's momentum buffer)")
      ->transform(CLI::IsMember({"adamw", "adam", "lamb", "lion", "adagrad", "sgd"}, CLI::ignore_case));
  cmd->add_flag("--bf16-state", args->bf16_state, "Optimizer state tensors in bf16 (strata.optimizer_state_dtype)");
  cmd->add_flag("--bf16-grads", args->bf16_grads, "Gradient shards in bf16 (strata.gradient_shard_dtype)");
  cmd->add_flag("--json", args->json, "Print JSON: tiers -> kinds -> bytes");
  cmd->callback([args, exit_code] { *exit_code = run_estimate(*args); });
}

}  // namespace strata::cli
