#include "strata/engine/engine_options.h"

#include <algorithm>
#include <cmath>

#include <c10/core/ScalarType.h>

#include "strata/engine/chunk_store.h"

namespace strata::engine {

Result<EngineOptions> EngineOptions::from_config(const Config& cfg, int world) {
  EngineOptions o;
  const ZeroConfig& z = cfg.zero_optimization;
  o.stage = z.stage;
  o.optimizer = cfg.optimizer;
  o.scheduler = cfg.scheduler;
  o.fp16 = cfg.fp16;
  o.compute_dtype = cfg.bf16.enabled ? at::kBFloat16 : cfg.fp16.enabled ? at::kHalf : at::kFloat;
  o.gradient_clipping = cfg.gradient_clipping;
  // The accumulation window the batch keys imply at this world size, as DeepSpeed derives
  // it ({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4} is 8 micro-steps on
  // one rank), and an inconsistent triple is an error: a front end may pass the config as
  // the user wrote it (strata train resolves it first; resolving twice changes nothing).
  Config batch = cfg;
  STRATA_RETURN_IF_ERROR(batch.resolve_batch(world));
  o.gradient_accumulation_steps = static_cast<int>(batch.gradient_accumulation_steps);
  o.reduce_bucket_size = std::max<std::uint64_t>(1, z.reduce_bucket_size);  // 0 (DeepSpeed allows it): reduce at once
  o.overlap_comm = z.overlap_comm;
  o.optimizer_threads = cfg.strata.optimizer_threads;
  o.nvme_gradients = cfg.strata.nvme_gradients;
  o.gradient_shards_on_compute = cfg.strata.gradient_shards_on_compute;
  o.optim_state_dtype = cfg.strata.optimizer_state_dtype == StateDtype::kBf16 ? at::kBFloat16 : at::kFloat;
  o.grad_shard_dtype = cfg.strata.gradient_shard_dtype == StateDtype::kBf16 ? at::kBFloat16 : at::kFloat;
  o.chunks.chunk_size_elems = cfg.strata.chunk_size;
  o.chunks.search_range_elems = cfg.strata.chunk_search_range;
  STRATA_ASSIGN_OR_RETURN(o.schedule, plan::ScheduleOptions::from_config(
                                          cfg, world, static_cast<std::uint32_t>(c10::elementSize(o.compute_dtype))));
  o.placement = cfg.strata.placement;
  o.param_device = z.offload_param.device;
  o.optim_device = z.offload_optimizer.device;
  const auto elems = [](std::uint64_t v) { return static_cast<std::int64_t>(std::min<std::uint64_t>(v, std::uint64_t{1} << 62)); };
  o.param_staging = {.buffer_count = z.offload_param.buffer_count,
                     .buffer_elems = elems(z.offload_param.buffer_size),
                     .max_in_cpu = elems(z.offload_param.max_in_cpu)};
  o.optim_max_in_cpu = elems(cfg.strata.optimizer_max_in_cpu);
  o.optim_pipeline = {.buffer_count = z.offload_optimizer.buffer_count,
                      .read_ahead = z.offload_optimizer.pipeline_read,
                      .write_behind = z.offload_optimizer.pipeline_write,
                      .sub_group_elems = static_cast<std::int64_t>(z.sub_group_elems())};
  o.offload_param_frac = cfg.strata.offload_param_frac;
  o.offload_optim_frac = cfg.strata.offload_optim_frac;
  o.swap = io::SwapStoreOptions::from_config(
      cfg, 0, !z.offload_optimizer.nvme_path.empty() ? z.offload_optimizer.nvme_path : z.offload_param.nvme_path);
  STRATA_RETURN_IF_ERROR(o.validate());
  return o;
}

Status EngineOptions::validate() const {
  auto invalid = [](std::string msg) { return make_error(ErrorCode::kInvalidArgument, "{}", msg); };
  if (stage < 0 || stage > 3) return invalid(fmt::format("stage must be 0, 1, 2 or 3, not {}", stage));
  STRATA_RETURN_IF_ERROR(kernel_dtype(compute_dtype));
  if (gradient_accumulation_steps < 1) return invalid("gradient_accumulation_steps must be >= 1");
  if (reduce_bucket_size == 0) return invalid("reduce_bucket_size must be >= 1");
  if (stage != 3 && (param_device != OffloadDevice::kNone || offload_param_frac > 0)) {
    return invalid(fmt::format("offloading parameters needs stage 3 (parameters are sharded only there), but stage is {}",
                               stage));
  }
  if (stage == 0 && (optim_device != OffloadDevice::kNone || offload_optim_frac > 0)) {
    return invalid("offloading the optimizer state needs stage 1, 2 or 3 (stage 0 is plain data parallelism)");
  }
  if ((param_device == OffloadDevice::kNvme || optim_device == OffloadDevice::kNvme) && swap.nvme_path.empty()) {
    return invalid("nvme offload needs an nvme_path");
  }
  if (optim_device == OffloadDevice::kNvme && optim_pipeline.buffer_count < optim_pipeline.needed()) {
    return invalid(fmt::format(
        "zero_optimization.offload_optimizer.buffer_count {} cannot hold the nvme optimizer pipeline: it needs {} "
        "buffers (the chunk being stepped{}{}); raise buffer_count or set pipeline_read / pipeline_write to false",
        optim_pipeline.buffer_count, optim_pipeline.needed(), optim_pipeline.read_ahead ? ", one read ahead" : "",
        optim_pipeline.write_behind ? ", one being written back" : ""));
  }
  if (optim_state_dtype != at::kFloat && optim_state_dtype != at::kBFloat16) {
    return invalid(fmt::format("optimizer state must be fp32 or bf16, not {}", c10::toString(optim_state_dtype)));
  }
  if (grad_shard_dtype != at::kFloat && grad_shard_dtype != at::kBFloat16) {
    return invalid(fmt::format("gradient shards must be fp32 or bf16, not {}", c10::toString(grad_shard_dtype)));
  }
  for (std::size_t g = 0; g < param_groups.size(); ++g) {
    const ParamGroup& pg = param_groups[g];
    if (!std::isfinite(pg.lr_scale) || pg.lr_scale < 0) {
      return invalid(fmt::format("parameter group {}: lr_scale must be finite and >= 0, got {}", g, pg.lr_scale));
    }
    if (pg.weight_decay && (!std::isfinite(*pg.weight_decay) || *pg.weight_decay < 0)) {
      return invalid(fmt::format("parameter group {}: weight_decay must be finite and >= 0, got {}", g, *pg.weight_decay));
    }
  }
  if (wrap && !param_groups.empty()) {
    return invalid("param_groups are for the built-in optimizers; a wrapped torch::optim optimizer has its own groups");
  }
  if (wrap && optim_state_dtype != at::kFloat) {
    return invalid("strata.optimizer_state_dtype bf16 is for the built-in optimizers; a wrapped torch::optim "
                   "optimizer keeps its own fp32 state");
  }
  if (wrap && host_step != StepKernels::kFused) {
    return invalid("host_step picks the built-in optimizers' kernels; a wrapped torch::optim optimizer steps itself");
  }
  if (wrap && optim_device == OffloadDevice::kNvme) {
    return invalid("a wrapped torch::optim optimizer steps master weights in memory: it cannot run with the "
                   "optimizer state on nvme");
  }
  if (optim_max_in_cpu < 0 || param_staging.max_in_cpu < 0) return invalid("max_in_cpu must be >= 0");
  if (offload_param_frac < 0 || offload_param_frac > 1 || offload_optim_frac < 0 || offload_optim_frac > 1) {
    return invalid("offload fractions must be between 0 and 1");
  }
  if (compute_device) STRATA_RETURN_IF_ERROR(validate_device(*compute_device));
  return schedule.validate();
}

Status EngineOptions::validate_device(c10::Device device) const {
  if (device.is_cpu()) return ok();
  auto invalid = [&device](std::string_view what) {
    return make_error(ErrorCode::kInvalidArgument, "a compute device of {} {} (docs/gpu.md)", device.str(), what);
  };
  if (!device.is_cuda()) return invalid("is not supported: the compute tier is the CPU or a CUDA GPU");
  // Every stage and tier runs there; what does not yet: the auto placement (its
  // planner simulates a budgeted compute tier) and a wrapped torch::optim optimizer
  // (it steps host masters).
  if (placement != Placement::kStatic) return invalid("needs the static placement");
  if (wrap) return invalid("cannot run a wrapped torch::optim optimizer yet");
  return ok();
}

}  // namespace strata::engine
