// The config schema. Adding a key = one line here plus a member in config.h and a row
// in docs/config.md. The Support column is kept honest: a key is kActive only when
// the code reads it.
#include "config_schema.h"

#include <cctype>
#include <cmath>
#include <limits>
#include <cstdlib>

#include <fmt/ranges.h>  // fmt::join (in format.h before fmt 11)

#include "strata/base/units.h"

namespace strata::config_schema {
namespace {

using nlohmann::json;
constexpr double kInf = std::numeric_limits<double>::infinity();

std::string describe(const json& v) {
  std::string dumped = v.dump();
  if (dumped.size() > 40) dumped = dumped.substr(0, 37) + "...";
  return fmt::format("{} {}", v.type_name(), dumped);
}

// A number from a JSON number or a string such as "5e8", "64MiB", "1e-4".
Result<double> read_number(const json& v, bool integral) {
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (integral) {
      auto size = parse_size(s);
      if (size) return static_cast<double>(*size);
      // "three" is not a number at all; "64XB" is a size with a bad unit, say that.
      if (s.empty() || !(std::isdigit(static_cast<unsigned char>(s[0])) || s[0] == '.' || s[0] == '-' || s[0] == '+'))
        return make_error(ErrorCode::kInvalidArgument, "expected a whole number or a size such as \"64MiB\", got string \"{}\"", s);
      return make_error(std::move(size).error());
    }
    char* end = nullptr;
    const double d = std::strtod(s.c_str(), &end);
    if (end != s.c_str() && *end == '\0') return d;
    // Allow unit suffixes on real-valued fields too ("1.5G" budgets in a float field).
    auto size = parse_size(s);
    if (size) return static_cast<double>(*size);
    return make_error(ErrorCode::kInvalidArgument, "expected a number, got string \"{}\"", s);
  }
  return make_error(ErrorCode::kInvalidArgument, "expected a {}, got {}",
                    integral ? "whole number or size string" : "number", describe(v));
}

Status check_range(const Field& f, double d, const json& v) {
  const bool below = f.min_exclusive ? d <= f.min : d < f.min;
  if (below || d > f.max || std::isnan(d)) {
    std::string lo = f.min == -kInf ? "-inf" : fmt::format("{:g}", f.min);
    std::string hi = f.max == kInf ? "inf" : fmt::format("{:g}", f.max);
    return make_error(ErrorCode::kOutOfRange, "{} is out of range; allowed {}{}..{}", v.dump(),
                      f.min_exclusive ? "> " : "", lo, hi);
  }
  return ok();
}

// The Field under construction keeps the range; closures refer to it through a copy
// made when the schema is built, which is fine because a Field never changes after.
template <class T>
Field integer(std::string path, T& member, double min, double max) {
  Field f{.path = std::move(path), .kind = Kind::kInt, .min = min, .max = max};
  f.read = [&member, f](const json& v) -> Status {
    STRATA_ASSIGN_OR_RETURN(double d, read_number(v, /*integral=*/true));
    if (d != std::floor(d)) return make_error(ErrorCode::kInvalidArgument, "expected a whole number, got {}", v.dump());
    STRATA_RETURN_IF_ERROR(check_range(f, d, v));
    // A range of "to infinity" still ends where the member's type does: 1e30 must not
    // wrap to 0 (or anything else) on the cast below.
    if (d >= std::ldexp(1.0, std::numeric_limits<T>::digits) || d < static_cast<double>(std::numeric_limits<T>::lowest())) {
      return make_error(ErrorCode::kOutOfRange, "{} does not fit in a {}-bit {}integer", v.dump(),
                        std::numeric_limits<T>::digits + std::numeric_limits<T>::is_signed,
                        std::numeric_limits<T>::is_signed ? "" : "unsigned ");
    }
    member = static_cast<T>(d);
    return ok();
  };
  f.write = [&member] { return json(member); };
  return f;
}

Field real(std::string path, double& member, double min, double max, bool min_exclusive = false) {
  Field f{.path = std::move(path), .kind = Kind::kFloat, .min = min, .max = max, .min_exclusive = min_exclusive};
  f.read = [&member, f](const json& v) -> Status {
    STRATA_ASSIGN_OR_RETURN(double d, read_number(v, /*integral=*/false));
    STRATA_RETURN_IF_ERROR(check_range(f, d, v));
    member = d;
    return ok();
  };
  f.write = [&member] { return json(member); };
  return f;
}

Field boolean(std::string path, bool& member) {
  Field f{.path = std::move(path), .kind = Kind::kBool};
  f.read = [&member](const json& v) -> Status {
    if (!v.is_boolean()) return make_error(ErrorCode::kInvalidArgument, "expected true or false, got {}", describe(v));
    member = v.get<bool>();
    return ok();
  };
  f.write = [&member] { return json(member); };
  return f;
}

Field text(std::string path, std::string& member) {
  Field f{.path = std::move(path), .kind = Kind::kString};
  f.read = [&member](const json& v) -> Status {
    if (!v.is_string()) return make_error(ErrorCode::kInvalidArgument, "expected a string, got {}", describe(v));
    member = v.get<std::string>();
    return ok();
  };
  f.write = [&member] { return json(member); };
  return f;
}

template <class E>
Field choice(std::string path, E& member, std::vector<std::pair<std::string, E>> options) {
  Field f{.path = std::move(path), .kind = Kind::kEnum};
  for (const auto& [name, value] : options) f.choices.push_back(name);
  f.read = [&member, options, f](const json& v) -> Status {
    if (v.is_string()) {
      const std::string s = v.get<std::string>();
      for (const auto& [name, value] : options) {
        if (name.size() == s.size() &&
            std::equal(name.begin(), name.end(), s.begin(),
                       [](char a, char b) { return std::tolower(a) == std::tolower(b); })) {
          member = value;
          return ok();
        }
      }
    }
    return make_error(ErrorCode::kInvalidArgument, "{} is not one of: {}", v.dump(), fmt::join(f.choices, ", "));
  };
  f.write = [&member, options]() -> json {
    for (const auto& [name, value] : options)
      if (value == member) return name;
    return nullptr;
  };
  return f;
}

Field real_pair(std::string path, std::array<double, 2>& member, double min, double max) {
  Field f{.path = std::move(path), .kind = Kind::kFloatPair, .min = min, .max = max};
  f.read = [&member, f](const json& v) -> Status {
    if (!v.is_array() || v.size() != 2) {
      return make_error(ErrorCode::kInvalidArgument, "expected a list of two numbers, got {}", describe(v));
    }
    std::array<double, 2> out{};
    for (std::size_t i = 0; i < 2; ++i) {
      STRATA_ASSIGN_OR_RETURN(out[i], read_number(v[i], /*integral=*/false));
      STRATA_RETURN_IF_ERROR(check_range(f, out[i], v[i]));
    }
    member = out;
    return ok();
  };
  f.write = [&member] { return json::array({member[0], member[1]}); };
  return f;
}

// DeepSpeed's other name for `target` (its config model accepts both): reads into the
// same member; not written by to_json (the canonical key is).
Field alias(const std::vector<Field>& fields, std::string path, const std::string& target) {
  for (const Field& f : fields) {
    if (f.path != target) continue;
    Field a = f;
    a.path = std::move(path);
    a.alias_of = target;
    a.write = nullptr;
    return a;
  }
  std::abort();  // a schema bug: the target is listed above its aliases
}

// The legacy zero_optimization.cpu_offload / cpu_offload_param booleans: DeepSpeed reads
// true as offload_optimizer / offload_param device "cpu".
template <class Offload>
Field legacy_cpu_offload(std::string path, Offload& o) {
  Field f{.path = std::move(path), .kind = Kind::kBool};
  f.read = [&o](const json& v) -> Status {
    if (!v.is_boolean()) return make_error(ErrorCode::kInvalidArgument, "expected true or false, got {}", describe(v));
    if (v.get<bool>()) o.device = OffloadDevice::kCpu;
    return ok();
  };
  return f;
}

// A DeepSpeed key (or whole section) that strata accepts with a warning.
Field recognised(std::string path, Support s, std::string note) {
  return Field{.path = std::move(path), .kind = Kind::kAny, .support = s, .note = std::move(note)};
}

// A DeepSpeed boolean whose default is all strata does: false is accepted, true refused
// with why (taking it with a warning would train on other numbers than asked for).
Field only_false(std::string path, std::string why) {
  Field f{.path = std::move(path), .kind = Kind::kBool, .note = "only false: " + why};
  f.read = [why](const json& v) -> Status {
    if (!v.is_boolean()) return make_error(ErrorCode::kInvalidArgument, "expected true or false, got {}", describe(v));
    if (v.get<bool>()) return make_error(ErrorCode::kInvalidArgument, "true is not supported: {}", why);
    return ok();
  };
  return f;
}

constexpr Support kTodo = Support::kNotImplemented;
constexpr Support kNoEffect = Support::kNoEffect;

void add_offload_fields(std::vector<Field>& out, const std::string& p, OffloadOptimizerConfig& o) {
  out.push_back(choice(p + ".device", o.device,
                       {{"none", OffloadDevice::kNone}, {"cpu", OffloadDevice::kCpu}, {"nvme", OffloadDevice::kNvme}}));
  out.push_back(text(p + ".nvme_path", o.nvme_path));
  out.push_back(integer(p + ".buffer_count", o.buffer_count, 1, 1024));
  out.push_back(recognised(p + ".pin_memory", kNoEffect, "pinning needs CUDA; host buffers are pinned automatically when it is present"));
  out.push_back(boolean(p + ".pipeline_read", o.pipeline_read));
  out.push_back(boolean(p + ".pipeline_write", o.pipeline_write));
  Field ratio = real(p + ".ratio", o.ratio, 0, 1);
  ratio.note = "with device cpu, the share of the chunks whose state goes to host; the rest stays on compute "
               "(strata.offload_optim_frac)";
  out.push_back(std::move(ratio));
  out.push_back(recognised(p + ".fast_init", kNoEffect, "strata always initialises offloaded state in place"));
}

void add_offload_fields(std::vector<Field>& out, const std::string& p, OffloadParamConfig& o) {
  out.push_back(choice(p + ".device", o.device,
                       {{"none", OffloadDevice::kNone}, {"cpu", OffloadDevice::kCpu}, {"nvme", OffloadDevice::kNvme}}));
  out.push_back(text(p + ".nvme_path", o.nvme_path));
  out.push_back(integer(p + ".buffer_count", o.buffer_count, 1, 1024));
  out.push_back(integer(p + ".buffer_size", o.buffer_size, 1, kInf));
  out.push_back(integer(p + ".max_in_cpu", o.max_in_cpu, 0, kInf));
  out.push_back(recognised(p + ".pin_memory", kNoEffect, "pinning needs CUDA; host buffers are pinned automatically when it is present"));
}

}  // namespace

std::vector<Field> bind(Config& c) {
  std::vector<Field> f;
  f.push_back(integer("train_batch_size", c.train_batch_size, 0, kInf));
  f.push_back(integer("train_micro_batch_size_per_gpu", c.train_micro_batch_size_per_gpu, 1, kInf));
  f.push_back(integer("gradient_accumulation_steps", c.gradient_accumulation_steps, 1, kInf));
  f.push_back(real("gradient_clipping", c.gradient_clipping, 0, kInf));

  f.push_back(boolean("fp16.enabled", c.fp16.enabled));
  f.push_back(real("fp16.loss_scale", c.fp16.loss_scale, 0, kInf));
  f.push_back(integer("fp16.initial_scale_power", c.fp16.initial_scale_power, 0, 63));
  f.push_back(integer("fp16.loss_scale_window", c.fp16.loss_scale_window, 1, kInf));
  f.push_back(integer("fp16.hysteresis", c.fp16.hysteresis, 1, kInf));
  f.push_back(boolean("fp16.consecutive_hysteresis", c.fp16.consecutive_hysteresis));
  f.push_back(real("fp16.min_loss_scale", c.fp16.min_loss_scale, 0, kInf, /*min_exclusive=*/true));
  f.push_back(recognised("fp16.auto_cast", kNoEffect, "strata casts parameters, not module inputs"));
  f.push_back(boolean("bf16.enabled", c.bf16.enabled));
  f.push_back(alias(f, "bfloat16.enabled", "bf16.enabled"));  // DeepSpeed's older section name
  f.push_back(recognised("bf16.immediate_grad_update", kNoEffect, "gradients are accumulated in fp32 buffers"));
  f.push_back(recognised("bf16.check_grad_overflow", kNoEffect, "bf16 steps always check for inf/NaN gradients"));
  f.push_back(recognised("fp16.fp16_master_weights_and_grads", kTodo, "master weights stay fp32"));
  f.push_back(recognised("bf16.bf16_master_weights_and_grads", kTodo, "master weights stay fp32"));
  Field bf16_states = boolean("bf16.bf16_optimizer_states", c.bf16.optimizer_states);
  bf16_states.note = "with bf16.enabled, strata.optimizer_state_dtype bf16 (the master stays fp32)";
  f.push_back(std::move(bf16_states));
  f.push_back(boolean("torch_autocast.enabled", c.torch_autocast.enabled));
  f.push_back(choice("torch_autocast.dtype", c.torch_autocast.dtype,
                     {{"bfloat16", AutocastDtype::kBf16}, {"bf16", AutocastDtype::kBf16},
                      {"torch.bfloat16", AutocastDtype::kBf16}, {"float16", AutocastDtype::kFp16},
                      {"fp16", AutocastDtype::kFp16}, {"half", AutocastDtype::kFp16},
                      {"torch.float16", AutocastDtype::kFp16}, {"float32", AutocastDtype::kFp32},
                      {"fp32", AutocastDtype::kFp32}, {"float", AutocastDtype::kFp32},
                      {"torch.float32", AutocastDtype::kFp32}}));
  f.push_back(recognised("torch_autocast.lower_precision_safe_modules", kNoEffect,
                         "every parameter's gradient is reduced in fp32"));

  OptimizerConfig& o = c.optimizer;
  f.push_back(choice("optimizer.type", o.type,
                     {{"Adam", OptimizerType::kAdam}, {"AdamW", OptimizerType::kAdamW},
                      {"SGD", OptimizerType::kSGD}, {"Adagrad", OptimizerType::kAdagrad},
                      {"Lion", OptimizerType::kLion}, {"Lamb", OptimizerType::kLamb}}));
  f.push_back(real("optimizer.params.lr", o.lr, 0, kInf));
  f.push_back(real_pair("optimizer.params.betas", o.betas, 0, 1));
  f.push_back(real("optimizer.params.eps", o.eps, 0, kInf));
  f.push_back(real("optimizer.params.weight_decay", o.weight_decay, 0, kInf));
  f.push_back(boolean("optimizer.params.amsgrad", o.amsgrad));
  f.push_back(boolean("optimizer.params.adam_w_mode", o.adam_w_mode));
  f.push_back(real("optimizer.params.momentum", o.momentum, 0, kInf));
  f.push_back(real("optimizer.params.dampening", o.dampening, 0, 1));
  f.push_back(boolean("optimizer.params.nesterov", o.nesterov));
  f.push_back(real("optimizer.params.lr_decay", o.lr_decay, 0, kInf));
  f.push_back(real("optimizer.params.initial_accumulator_value", o.initial_accumulator_value, 0, kInf));
  f.push_back(recognised("optimizer.params.torch_adam", kNoEffect, "strata always uses its fused CPU kernels"));
  f.push_back(recognised("optimizer.params.max_grad_norm", kNoEffect,
                         "DeepSpeed zeroes it outside fp16; clip with gradient_clipping"));
  f.push_back(recognised("optimizer.legacy_fusion", kNoEffect, "strata always uses its fused CPU kernels"));
  f.push_back(boolean("optimizer.params.bias_correction", o.bias_correction));
  f.push_back(real("optimizer.params.max_coeff", o.max_coeff, 0, kInf));
  f.push_back(real("optimizer.params.min_coeff", o.min_coeff, 0, kInf));
  f.push_back(only_false("optimizer.params.eps_inside_sqrt", "Lamb adds eps outside the square root"));

  SchedulerConfig& sc = c.scheduler;
  f.push_back(choice("scheduler.type", sc.type,
                     {{"none", SchedulerType::kNone}, {"WarmupLR", SchedulerType::kWarmupLR},
                      {"WarmupDecayLR", SchedulerType::kWarmupDecayLR}, {"WarmupCosineLR", SchedulerType::kWarmupCosineLR},
                      {"OneCycle", SchedulerType::kOneCycle}, {"LRRangeTest", SchedulerType::kLRRangeTest}}));
  const std::string sp = "scheduler.params.";
  f.push_back(real(sp + "warmup_min_lr", sc.warmup_min_lr, 0, kInf));
  f.push_back(real(sp + "warmup_max_lr", sc.warmup_max_lr, 0, kInf));
  f.push_back(integer(sp + "warmup_num_steps", sc.warmup_num_steps, 0, kInf));
  f.push_back(text(sp + "warmup_type", sc.warmup_type));
  f.push_back(integer(sp + "total_num_steps", sc.total_num_steps, 0, kInf));
  f.push_back(real(sp + "warmup_min_ratio", sc.warmup_min_ratio, 0, 1));
  f.push_back(real(sp + "cos_min_ratio", sc.cos_min_ratio, 0, 1));
  // -1: not given (OneCycle requires both; validate() says so).
  f.push_back(real(sp + "cycle_min_lr", sc.cycle_min_lr, -1, kInf));
  f.push_back(real(sp + "cycle_max_lr", sc.cycle_max_lr, -1, kInf));
  f.push_back(real(sp + "decay_lr_rate", sc.decay_lr_rate, 0, kInf));
  f.push_back(integer(sp + "cycle_first_step_size", sc.cycle_first_step_size, 1, kInf));
  f.push_back(integer(sp + "cycle_second_step_size", sc.cycle_second_step_size, 0, kInf));  // 0: the first's
  f.push_back(recognised(sp + "cycle_first_stair_count", kNoEffect, "DeepSpeed's OneCycle does not use it either"));
  f.push_back(recognised(sp + "cycle_second_stair_count", kNoEffect, "DeepSpeed's OneCycle does not use it either"));
  f.push_back(integer(sp + "decay_step_size", sc.decay_step_size, 0, kInf));
  f.push_back(boolean(sp + "cycle_momentum", sc.cycle_momentum));
  f.push_back(real(sp + "cycle_min_mom", sc.cycle_min_mom, 0, 1));
  f.push_back(real(sp + "cycle_max_mom", sc.cycle_max_mom, 0, 1));
  f.push_back(real(sp + "decay_mom_rate", sc.decay_mom_rate, 0, kInf));
  f.push_back(real(sp + "lr_range_test_min_lr", sc.lr_range_test_min_lr, 0, kInf));
  f.push_back(real(sp + "lr_range_test_step_rate", sc.lr_range_test_step_rate, 0, kInf));
  f.push_back(integer(sp + "lr_range_test_step_size", sc.lr_range_test_step_size, 1, kInf));
  f.push_back(boolean(sp + "lr_range_test_staircase", sc.lr_range_test_staircase));
  f.push_back(recognised(sp + "last_batch_iteration", kNoEffect, "a resumed run takes the step from its checkpoint"));

  ZeroConfig& z = c.zero_optimization;
  const std::string zp = "zero_optimization";
  f.push_back(integer(zp + ".stage", z.stage, 0, 3));
  f.push_back(recognised(zp + ".contiguous_gradients", kNoEffect, "gradients always live in contiguous chunk buffers"));
  f.push_back(boolean(zp + ".overlap_comm", z.overlap_comm));
  // 0, which DeepSpeed allows: every chunk's gradients are reduced as soon as they are in.
  f.push_back(integer(zp + ".reduce_bucket_size", z.reduce_bucket_size, 0, kInf));
  f.push_back(recognised(zp + ".allgather_bucket_size", kNoEffect, "parameters are all-gathered chunk by chunk"));
  f.push_back(integer(zp + ".stage3_prefetch_bucket_size", z.stage3_prefetch_bucket_size, 0, kInf));
  f.push_back(integer(zp + ".stage3_param_persistence_threshold", z.stage3_param_persistence_threshold, 0, kInf));
  f.push_back(integer(zp + ".stage3_max_live_parameters", z.stage3_max_live_parameters, 0, kInf));
  f.push_back(integer(zp + ".stage3_max_reuse_distance", z.stage3_max_reuse_distance, 0, kInf));
  f.push_back(integer(zp + ".sub_group_size", z.sub_group_size, 1, kInf));
  // DeepSpeed's config model accepts the stage3_ keys without the prefix too.
  for (const char* key : {"prefetch_bucket_size", "param_persistence_threshold", "max_live_parameters",
                          "max_reuse_distance"}) {
    f.push_back(alias(f, zp + "." + key, zp + ".stage3_" + key));
  }
  add_offload_fields(f, zp + ".offload_optimizer", z.offload_optimizer);
  add_offload_fields(f, zp + ".offload_param", z.offload_param);
  f.push_back(legacy_cpu_offload(zp + ".cpu_offload", z.offload_optimizer));
  f.push_back(legacy_cpu_offload(zp + ".cpu_offload_param", z.offload_param));
  f.push_back(recognised(zp + ".cpu_offload_use_pin_memory", kNoEffect, "pinning needs CUDA"));
  for (const char* key : {"allgather_partitions", "reduce_scatter", "round_robin_gradients",
                          "load_from_fp32_weights", "elastic_checkpoint", "ignore_unused_parameters",
                          "legacy_stage1", "log_trace_cache_warnings",
                          "use_multi_rank_bucket_allreduce", "pipeline_loading_checkpoint", "override_module_apply"}) {
    f.push_back(recognised(zp + "." + key, kNoEffect, "strata's behaviour here is fixed; see docs/config.md"));
  }
  for (const char* key : {"stage3_gather_16bit_weights_on_model_save", "stage3_gather_fp16_weights_on_model_save",
                          "gather_16bit_weights_on_model_save"}) {
    f.push_back(recognised(zp + "." + key, kNoEffect,
                           "engine.save_16bit_model always gathers the whole weights (docs/python.md)"));
  }
  for (const char* key : {"zero_hpz_partition_size", "zero_quantized_weights", "zero_quantized_gradients",
                          "mics_shard_size", "mics_hierarchical_params_gather", "memory_efficient_linear",
                          "offload_param.ratio", "stage3_model_persistence_threshold", "model_persistence_threshold",
                          "zeropp_loco_param", "module_granularity_threshold",
                          "stage3_module_granularity_threshold", "zero_quantized_nontrainable_weights", "use_all_reduce_for_fetch_params",
                          "stage3_use_all_reduce_for_fetch_params"}) {
    f.push_back(recognised(zp + "." + key, kTodo, "not implemented by strata"));
  }

  AioConfig& a = c.aio;
  f.push_back(integer("aio.block_size", a.block_size, 4096, 1 << 30));
  f.push_back(integer("aio.queue_depth", a.queue_depth, 1, 4096));
  f.push_back(integer("aio.intra_op_parallelism", a.intra_op_parallelism, 1, 256));
  f.push_back(boolean("aio.single_submit", a.single_submit));
  f.push_back(boolean("aio.overlap_events", a.overlap_events));
  f.push_back(recognised("aio.thread_count", kNoEffect, "use aio.intra_op_parallelism"));
  f.push_back(recognised("aio.use_gds", kNoEffect, "GPUDirect Storage is not supported"));

  StrataConfig& s = c.strata;
  f.push_back(integer("strata.chunk_size", s.chunk_size, 0, kInf));
  f.push_back(integer("strata.chunk_search_range", s.chunk_search_range, 0, kInf));
  f.push_back(choice("strata.placement", s.placement, {{"static", Placement::kStatic}, {"auto", Placement::kAuto}}));
  f.push_back(integer("strata.compute_budget", s.compute_budget, 0, kInf));
  f.push_back(integer("strata.host_budget", s.host_budget, 0, kInf));
  f.push_back(integer("strata.nvme_budget", s.nvme_budget, 0, kInf));
  f.push_back(real("strata.offload_param_frac", s.offload_param_frac, 0, 1));
  f.push_back(real("strata.offload_optim_frac", s.offload_optim_frac, 0, 1));
  f.push_back(integer("strata.optimizer_threads", s.optimizer_threads, 0, 1024));
  f.push_back(integer("strata.min_io_bytes", s.min_io_bytes, 0, kInf));
  f.push_back(boolean("strata.nvme_gradients", s.nvme_gradients));
  f.push_back(boolean("strata.gradient_shards_on_compute", s.gradient_shards_on_compute));
  f.push_back(choice("strata.optimizer_state_dtype", s.optimizer_state_dtype,
                     {{"fp32", StateDtype::kFp32}, {"bf16", StateDtype::kBf16}}));
  f.push_back(choice("strata.gradient_shard_dtype", s.gradient_shard_dtype,
                     {{"fp32", StateDtype::kFp32}, {"bf16", StateDtype::kBf16}}));
  f.push_back(integer("strata.optimizer_max_in_cpu", s.optimizer_max_in_cpu, 0, kInf));
  f.push_back(real("strata.comm_timeout_s", s.comm_timeout_s, 0, kInf, /*min_exclusive=*/true));
  f.push_back(text("strata.job_name", s.job_name));

  // Top-level DeepSpeed sections that describe things outside strata's engine.
  for (const char* key : {"steps_per_print", "wall_clock_breakdown", "dump_state", "memory_breakdown",
                          "tensorboard", "wandb", "csv_monitor", "comms_logger", "flops_profiler",
                          "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer", "nebula", "timers",
                          "use_node_local_storage", "graph_harvesting", "comet",
                          "vocabulary_size", "allgather_size"}) {
    f.push_back(recognised(key, kNoEffect, "DeepSpeed runtime option with no strata equivalent"));
  }
  // Read by the Python front end's data loader (initialize(training_data=...),
  // engine.deepspeed_io); checked here, so that "true" as a string is an error and not False.
  Field drop_last{.path = "dataloader_drop_last", .kind = Kind::kBool,
                  .note = "Python: the data loader of initialize(training_data=...) drops a last partial batch"};
  drop_last.read = [](const json& v) -> Status {
    if (!v.is_boolean()) return make_error(ErrorCode::kInvalidArgument, "expected true or false, got {}", describe(v));
    return ok();
  };
  f.push_back(std::move(drop_last));
  // DeepSpeed's block configures deepspeed.checkpointing (partitioned or CPU-held
  // activations); recomputation itself needs no config here.
  f.push_back(recognised("activation_checkpointing", kTodo,
                         "strata does not partition or offload activations; torch.utils.checkpoint in the model "
                         "works at every stage (docs/python.md)"));
  for (const char* key : {"prescale_gradients",
                          "gradient_predivide_factor", "communication_data_type", "sparse_gradients",
                          "amp", "compression_training", "elasticity", "pipeline", "data_efficiency",
                          "checkpoint", "data_types", "autotuning", "sparse_attention", "curriculum_learning",
                          "disable_allgather", "seq_parallel_communication_data_type", "load_universal_checkpoint",
                          "weight_quantization", "hybrid_engine", "eigenvalue", "progressive_layer_drop",
                          "quantize_training", "compile", "gradient_accumulation_dtype",
                          "fp32_allreduce", "tensor_parallel"}) {
    f.push_back(recognised(key, kTodo, "not implemented by strata"));
  }
  return f;
}

}  // namespace strata::config_schema
