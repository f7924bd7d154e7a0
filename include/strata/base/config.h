// strata::Config: the one validated configuration of a training job.
//
//   std::vector<std::string> warnings;
//   STRATA_ASSIGN_OR_RETURN(strata::Config cfg, strata::Config::load("ds_config.json", &warnings));
//   STRATA_RETURN_IF_ERROR(cfg.resolve_batch(world));
//   // Components build their own validated options from it:
//   STRATA_ASSIGN_OR_RETURN(auto engine_opts, strata::engine::EngineOptions::from_config(cfg, world));
//   auto swap_opts = strata::io::SwapStoreOptions::from_config(cfg, rank, nvme_path);
//   fmt::print("{}", cfg.to_json().dump(2));
//
// The file format is DeepSpeed's config vocabulary (train_batch_size, fp16, bf16,
// optimizer, zero_optimization, aio) plus strata's own `strata` section; docs/config.md
// lists every key. Loading checks every key against one schema (src/base/config_schema.cpp):
// unknown keys, wrong types and out-of-range values are errors that name the JSON path;
// DeepSpeed keys that strata recognises but does not act on are warnings.
//
// Element counts (bucket sizes, thresholds, chunk_size) are in elements, as in DeepSpeed;
// budgets and block sizes are in bytes. Every numeric field also takes a string with a
// unit or exponent: "5e8", "64MiB", "1.5GB", "500M".
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "strata/base/status.h"

namespace strata {

enum class OptimizerType { kAdam, kAdamW, kSGD, kAdagrad, kLion, kLamb };
enum class OffloadDevice { kNone, kCpu, kNvme };
enum class Placement { kStatic, kAuto };
enum class StateDtype { kFp32, kBf16 };
// torch_autocast.dtype: DeepSpeed's dtype names (bfloat16, float16, float32 and their
// aliases); only bf16 is run (Config::validate says why the others are refused).
enum class AutocastDtype { kBf16, kFp16, kFp32 };

std::string_view to_string(OptimizerType t);
std::string_view to_string(OffloadDevice d);
std::string_view to_string(Placement p);

struct OptimizerConfig {
  OptimizerType type = OptimizerType::kAdamW;
  double lr = 1e-3;
  std::array<double, 2> betas{0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool amsgrad = false;
  // DeepSpeed's Adam uses decoupled weight decay unless adam_w_mode is false; strata
  // follows it so that DeepSpeed configs train the same way. See effective_type().
  bool adam_w_mode = true;
  double momentum = 0.0;  // SGD
  double dampening = 0.0;
  bool nesterov = false;
  double lr_decay = 0.0;  // Adagrad
  double initial_accumulator_value = 0.0;
  // Lamb (DeepSpeed's FusedLamb): the trust ratio's clamp, and whether step_size takes
  // the bias corrections (kernels/optimizer.h). Only Lamb may turn bias_correction off.
  double max_coeff = 10.0;
  double min_coeff = 0.01;
  bool bias_correction = true;

  // kAdam with adam_w_mode is kAdamW; every other type is itself.
  OptimizerType effective_type() const;
  // The optimizer's state tensors per parameter, besides the fp32 master: Adam's m and v
  // (and vmax with amsgrad), SGD's momentum (none without), Adagrad's sum, Lion's m,
  // Lamb's m and v.
  int state_tensors() const;

  bool operator==(const OptimizerConfig&) const = default;
};

struct Fp16Config {
  bool enabled = false;
  double loss_scale = 0.0;  // 0 = dynamic loss scaling
  int initial_scale_power = 16;
  int loss_scale_window = 1000;
  int hysteresis = 2;
  bool consecutive_hysteresis = false;
  double min_loss_scale = 1.0;

  bool operator==(const Fp16Config&) const = default;
};

struct Bf16Config {
  bool enabled = false;
  // DeepSpeed's bf16.bf16_optimizer_states: in bf16 training, the optimizer state in bf16
  // (Config::apply_bf16_optimizer_states; the master stays fp32).
  bool optimizer_states = false;

  bool operator==(const Bf16Config&) const = default;
};

// DeepSpeed's "torch_autocast" block: PyTorch's automatic mixed precision. The forward
// runs under autocast in bf16 (matmuls and convolutions in bf16, what torch's autocast
// lists for fp32 in fp32) over fp32 parameters, which the engine holds, gathers and reduces as fp32; with
// bf16.enabled instead the parameters themselves are cast to bf16. The forward's guard is
// engine/autocast.h (AutocastGuard); the Python engine uses torch.autocast.
struct TorchAutocastConfig {
  bool enabled = false;
  AutocastDtype dtype = AutocastDtype::kBf16;

  bool operator==(const TorchAutocastConfig&) const = default;
};

// DeepSpeed's "scheduler" block: type and params with DeepSpeed's names and defaults.
// The curves are in strata/base/lr_schedule.h.
enum class SchedulerType { kNone, kWarmupLR, kWarmupDecayLR, kWarmupCosineLR, kOneCycle, kLRRangeTest };
std::string_view to_string(SchedulerType t);

struct SchedulerConfig {
  SchedulerType type = SchedulerType::kNone;
  // WarmupLR, WarmupDecayLR (total_num_steps), WarmupCosineLR (total_num_steps; the
  // optimizer's lr is the peak). total_num_steps 0: not given (strata train fills in
  // --steps; elsewhere an error).
  double warmup_min_lr = 0.0;
  double warmup_max_lr = 0.001;
  std::int64_t warmup_num_steps = 1000;
  std::string warmup_type = "log";  // "log" or "linear"
  std::int64_t total_num_steps = 0;
  double warmup_min_ratio = 0.0;
  double cos_min_ratio = 0.0001;
  // OneCycle. cycle_min_lr and cycle_max_lr are required (-1: not given);
  // cycle_second_step_size 0 means cycle_first_step_size, as DeepSpeed's None.
  double cycle_min_lr = -1.0;
  double cycle_max_lr = -1.0;
  double decay_lr_rate = 0.0;
  std::int64_t cycle_first_step_size = 2000;
  std::int64_t cycle_second_step_size = 0;
  std::int64_t decay_step_size = 0;
  bool cycle_momentum = true;
  double cycle_min_mom = 0.8;
  double cycle_max_mom = 0.9;
  double decay_mom_rate = 0.0;
  // LRRangeTest.
  double lr_range_test_min_lr = 0.001;
  double lr_range_test_step_rate = 1.0;
  std::int64_t lr_range_test_step_size = 2000;
  bool lr_range_test_staircase = false;

  bool operator==(const SchedulerConfig&) const = default;
};

struct OffloadOptimizerConfig {
  OffloadDevice device = OffloadDevice::kNone;
  std::string nvme_path;
  // nvme: the step's staging buffers, each one chunk shard's state (and gradient), from
  // a huge-page pool of buffer_count of them (Note [nvme optimizer state]).
  int buffer_count = 4;
  bool pipeline_read = true;   // read chunk k+1 while chunk k steps (DeepSpeed's default: false)
  bool pipeline_write = true;  // write chunk k-1 back while chunk k steps (DeepSpeed's default: false)
  // DeepSpeed's share of the optimizer state that device cpu offloads (ZeRO-Offload++);
  // the rest stays on the compute device. Config::from_json turns ratio < 1 with device
  // cpu into strata.offload_optim_frac (and device none): strata's static placement.
  double ratio = 1.0;

  bool operator==(const OffloadOptimizerConfig&) const = default;
};

struct OffloadParamConfig {
  OffloadDevice device = OffloadDevice::kNone;
  std::string nvme_path;
  // nvme: staging buffers for the schedule's reads of parameter shards (Note [nvme
  // parameter staging] in src/engine/gatherer.h); buffer_size is in elements and must
  // hold the largest shard.
  int buffer_count = 5;
  std::uint64_t buffer_size = 100'000'000;
  // nvme: elements of parameter shards kept in host memory instead, chunk by chunk from
  // the first (DeepSpeed's default is 1e9; strata's 0: nvme means nvme).
  std::uint64_t max_in_cpu = 0;

  bool operator==(const OffloadParamConfig&) const = default;
};

struct ZeroConfig {
  int stage = 0;
  bool overlap_comm = true;
  std::uint64_t reduce_bucket_size = 500'000'000;     // elements
  std::uint64_t stage3_prefetch_bucket_size = 50'000'000;
  std::uint64_t stage3_param_persistence_threshold = 100'000;
  std::uint64_t stage3_max_live_parameters = 1'000'000'000;
  std::uint64_t stage3_max_reuse_distance = 1'000'000'000;
  // Elements per optimizer sub-group of nvme state (Note [optimizer sub-groups]).
  std::uint64_t sub_group_size = 1'000'000'000;
  // sub_group_size as the engine uses it: a multiple of 1024 elements (4 KiB of fp32, so
  // every sub-group of an aligned shard is aligned), at least 1024, at most 2^40.
  std::uint64_t sub_group_elems() const {
    const std::uint64_t capped = sub_group_size < (std::uint64_t{1} << 40) ? sub_group_size : std::uint64_t{1} << 40;
    return capped < 1024 ? 1024 : capped / 1024 * 1024;
  }
  OffloadOptimizerConfig offload_optimizer;
  OffloadParamConfig offload_param;

  bool operator==(const ZeroConfig&) const = default;
};

struct AioConfig {
  std::uint64_t block_size = 1 << 20;  // bytes
  int queue_depth = 8;
  int intra_op_parallelism = 1;
  bool single_submit = false;
  bool overlap_events = true;

  bool operator==(const AioConfig&) const = default;
};

struct StrataConfig {
  std::uint64_t chunk_size = 0;  // elements; 0 = search for the least waste
  std::uint64_t chunk_search_range = 64 * 1024 * 1024;  // elements above the largest param
  Placement placement = Placement::kStatic;
  std::uint64_t compute_budget = 0;  // bytes; 0 = no limit (on CPU: same pool as host)
  std::uint64_t host_budget = 0;     // bytes; 0 = no limit
  std::uint64_t nvme_budget = 0;     // bytes; 0 = no limit
  // Static placement fractions, as Gemini's: the share of parameter chunks whose shard
  // lives off the compute tier, and the share of optimizer-state chunks offloaded.
  double offload_param_frac = 0.0;
  double offload_optim_frac = 0.0;
  int optimizer_threads = 0;  // 0 = one per core
  std::uint64_t min_io_bytes = 1 << 20;  // smaller swap records stay in host memory
  // Stages 2-3 with the optimizer state on nvme: gradient shards go to nvme too, each as
  // soon as it is complete, in the layout the step reads (Note [gradients on nvme]).
  bool nvme_gradients = true;
  // Stages 2-3, chunks whose optimizer step runs off the compute tier (state on host or
  // nvme): their gradient shards stay in compute memory until the step, which copies
  // each one to the host just before it steps the chunk (Note [gradients kept on
  // compute] in src/engine/grad_reducer.h). On a GPU this moves the shards' bytes (2 or
  // 4 a parameter) from host RAM or nvme to GPU memory. Takes precedence over
  // nvme_gradients.
  bool gradient_shards_on_compute = false;
  // The dtype of the optimizer's state tensors (Adam's m and v, SGD's momentum,
  // Adagrad's sum): fp32, or bf16, which saves 4 of Adam's 16 bytes a parameter
  // (the master stays fp32; checkpoints hold fp32).
  StateDtype optimizer_state_dtype = StateDtype::kFp32;
  // The dtype of the gradient shards the step reads (stages 2-3, and stages 0-1 where
  // the step runs off the compute tier): fp32, or bf16, which halves their host memory
  // and nvme traffic. With a bf16 compute dtype and no gradient accumulation a reduced
  // shard is bf16 already, so bf16 loses nothing then; micro-steps and a chunk reduced
  // twice in one backward round their sums to bf16.
  StateDtype gradient_shard_dtype = StateDtype::kFp32;
  // offload_optimizer nvme: elements of optimizer state shards kept in host memory
  // instead, whole chunks from the first (as offload_param.max_in_cpu for parameters):
  // RAM first, then the disk.
  std::uint64_t optimizer_max_in_cpu = 0;
  double comm_timeout_s = 300.0;
  std::string job_name;  // names the NVMe directory; empty = derived from the pid

  bool operator==(const StrataConfig&) const = default;
};

// Which of the three batch keys a config (or strata train's flags) gave, for
// resolve_batch(). Bookkeeping, not part of a config's value: it compares equal always,
// so from_json(to_json(c)) == c holds although to_json writes all three.
struct BatchKeysGiven {
  bool train = false, micro = false, accum = false;
  bool operator==(const BatchKeysGiven&) const { return true; }
};

struct Config {
  std::int64_t train_batch_size = 0;  // 0 = micro_batch * grad_accum * world
  std::int64_t train_micro_batch_size_per_gpu = 1;
  std::int64_t gradient_accumulation_steps = 1;
  double gradient_clipping = 0.0;  // 0 = no clipping
  Fp16Config fp16;
  Bf16Config bf16;
  TorchAutocastConfig torch_autocast;
  OptimizerConfig optimizer;
  SchedulerConfig scheduler;
  ZeroConfig zero_optimization;
  AioConfig aio;
  StrataConfig strata;
  BatchKeysGiven batch_given;  // set by from_json; strata train's flags set theirs

  // Parses and validates a JSON document. Warnings (keys recognised but not acted on)
  // are appended to *warnings, or logged when warnings is null.
  static Result<Config> from_json(const nlohmann::json& doc, std::vector<std::string>* warnings = nullptr);
  // Parses JSON text; `origin` names the source in messages (a path or "<string>").
  static Result<Config> parse(std::string_view text, std::string_view origin = "<string>",
                              std::vector<std::string>* warnings = nullptr);
  static Result<Config> load(const std::string& path, std::vector<std::string>* warnings = nullptr);

  // The normalized form: every key, with defaults filled in. from_json(to_json()) == *this.
  nlohmann::json to_json() const;

  // Rules that span fields (fp16 and bf16 together, offload to nvme without a path, ...).
  Status validate() const;
  // The batch triple as DeepSpeed derives it from the keys given (batch_given): with all
  // three, checks train_batch_size == micro * accum * world; with two, derives the third
  // (integer division, as DeepSpeed); train_batch_size alone means accum 1 and micro =
  // train / world; otherwise train_batch_size = micro * accum * world. An inconsistent
  // triple is DeepSpeed's error, with the numbers.
  Status resolve_batch(int world_size);

  // DeepSpeed's bf16.bf16_optimizer_states in bf16 training is strata.optimizer_state_dtype
  // bf16. from_json applies it; strata train again after its precision flags (--bf16 on
  // a config that leaves bf16 to strata).
  void apply_bf16_optimizer_states() {
    if (bf16.enabled && bf16.optimizer_states) strata.optimizer_state_dtype = StateDtype::kBf16;
  }

  bool operator==(const Config&) const = default;
};

// One row of the schema, for `strata config keys` and docs/config.md.
struct ConfigKey {
  std::string path;           // "zero_optimization.stage"
  std::string type;           // "int", "number", "bool", "string", "one of: a, b", "any"
  std::string default_value;  // JSON text; empty for recognised-only keys
  std::string range;          // "0..3", "> 0", "" when unbounded
  std::string status;         // "active", "not implemented", "no effect"
  std::string note;
  std::string alias_of;       // DeepSpeed's other name for this key ("zero_optimization.stage3_...")
};
std::vector<ConfigKey> config_keys();
// config_keys() as the Markdown table of docs/config.md (`strata config keys --markdown`).
std::string config_keys_markdown();

}  // namespace strata
