// EngineOptions: the one validated options struct of the engine, for every ZeRO stage.
//
//   STRATA_ASSIGN_OR_RETURN(engine::EngineOptions o, engine::EngineOptions::from_config(cfg, comm.world()));
//   o.chunks.search_step_elems = hidden;   // anything the config does not say
//   STRATA_ASSIGN_OR_RETURN(auto eng, engine::Engine::create(units, comm, o));
//
// Every setting has one home: budgets, prefetch and reuse knobs and the persistence
// threshold are in `schedule`; packing knobs in `chunks`; tiers in the offload fields.
// What each stage does with them (validate() rejects what a stage cannot do):
//   stage 0  data parallel: every rank holds all parameters, gradients and optimizer
//            state; gradients are all-reduced. The baseline the others are measured by.
//   stage 1  + the optimizer state (fp32 master, m, v) is sharded across ranks.
//   stage 2  + gradients are reduce-scattered into shards during backward; full-size
//            gradient buffers live only until reduced (reduce_bucket_size in flight).
//   stage 3  + parameters are sharded and gathered per unit, as the schedule says.
// The optimizer state may live on compute, host (offload_optimizer cpu) or nvme at
// stages 1-3; parameter shards on host or nvme at stage 3 (offload_param).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "strata/base/config.h"
#include "strata/base/status.h"
#include "strata/engine/chunk_store.h"
#include "strata/io/swap_store.h"
#include "strata/plan/schedule.h"

namespace torch::optim {
class Optimizer;
}

namespace strata::engine {

// Builds a torch::optim optimizer over the fp32 master shards (one tensor per chunk
// with a trainable parameter), to run instead of the fused kernels (FairScale OSS's
// "wrap any optimizer"). Elementwise optimizers then behave as unsharded.
using OptimizerFactory = std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<at::Tensor> shards)>;

struct EngineOptions {
  int stage = 3;
  OptimizerConfig optimizer;
  // DeepSpeed's "scheduler" block: the engine sets the lr (and OneCycle's betas) of every
  // optimizer step from it (Note [scheduler stepping] in strata/base/lr_schedule.h).
  // kNone: the lr stays optimizer.lr until set_lr().
  SchedulerConfig scheduler;
  Fp16Config fp16;                      // loss scaling (dynamic when fp16.loss_scale == 0)
  at::ScalarType compute_dtype = at::kFloat;
  // Where gathered chunks, gradient buffers and the forward and backward live: the
  // compute tier (docs/gpu.md). Unset: the device of the model's parameters (the CPU
  // for deferred ones). On a GPU, optimizer state left on the compute tier lives in GPU
  // memory and is stepped there by ATen ops (StepKernel::run_tensors); state offloaded
  // to cpu or nvme is stepped by the fused CPU kernels.
  std::optional<c10::Device> compute_device;
  // Which code steps optimizer state that lives in host memory (the host tier, nvme
  // staging, or a CPU compute tier): kFused, the SIMD kernels (the default), or
  // kTensorOps, the ATen ops a GPU's state always takes. kTensorOps on a CPU exists to
  // check that path (gradient statistics and step as tensor ops) where there is no GPU.
  enum class StepKernels { kFused, kTensorOps };
  StepKernels host_step = StepKernels::kFused;
  // The optimizer's state tensors (m, v, momentum, sum): fp32 or bf16
  // (strata.optimizer_state_dtype). The master and the step's arithmetic stay fp32.
  at::ScalarType optim_state_dtype = at::kFloat;
  // The gradient shards the step reads: fp32 or bf16 (strata.gradient_shard_dtype). A
  // stage 0-1 step on the compute tier reads its slice of the compute-dtype buffer.
  at::ScalarType grad_shard_dtype = at::kFloat;
  double gradient_clipping = 0.0;       // max L2 norm; 0 = off
  int gradient_accumulation_steps = 1;
  // Stages 2-3: the most gradient elements in flight to their reduce-scatter (full-size
  // buffers waiting or being reduced); stages 0-1 all-reduce chunk by chunk.
  std::uint64_t reduce_bucket_size = 500'000'000;
  bool overlap_comm = true;             // reduce during backward, not after it
  int optimizer_threads = 0;            // 0 = one per core
  ChunkOptions chunks;
  // Stage-3 knobs (prefetch bucket, max live, reuse distance, persistence threshold) and
  // the tier budgets of every stage. world is filled in from the communicator.
  plan::ScheduleOptions schedule;
  Placement placement = Placement::kStatic;
  OffloadDevice param_device = OffloadDevice::kNone;  // stage 3: where parameter shards live
  // param_device nvme: Load staging buffers (count, elements each), and the elements of
  // parameter shards kept on host instead (offload_param.buffer_count / buffer_size /
  // max_in_cpu).
  struct ParamStaging {
    int buffer_count = 5;
    std::int64_t buffer_elems = 100'000'000;
    std::int64_t max_in_cpu = 0;
  } param_staging;
  OffloadDevice optim_device = OffloadDevice::kNone;  // where master + optimizer state live
  // optim_device nvme: elements of optimizer state shards kept on host instead, whole
  // chunks from the first (strata.optimizer_max_in_cpu).
  std::int64_t optim_max_in_cpu = 0;
  double offload_param_frac = 0.0;   // static: share of chunks whose param shard is on host
  double offload_optim_frac = 0.0;   // static: share of chunks whose optimizer state is on host
  // nvme optimizer state: the step's staging buffers (Note [nvme optimizer state]).
  struct OptimPipeline {
    int buffer_count = 4;      // chunk-shard buffers in the huge-page staging pool
    bool read_ahead = true;    // read chunk k+1 while chunk k steps
    bool write_behind = true;  // write chunk k-1 back while chunk k steps
    // Elements per sub-group of nvme state, a multiple of 1024 (Note [optimizer
    // sub-groups] in src/engine/chunk_runtime.h): the pipeline's unit.
    std::int64_t sub_group_elems = 999'999'488;
    // Buffers the pipeline holds at once: the one stepped, plus one read ahead, plus
    // one being written back.
    int needed() const { return 1 + (read_ahead ? 1 : 0) + (write_behind ? 1 : 0); }
  } optim_pipeline;
  // For nvme offload: the swap store (nvme_path, job, aio, min_io_bytes); its rank is
  // filled in from the communicator.
  io::SwapStoreOptions swap;
  bool prefetch = true;              // false: on-demand fetching even with a trace
  // Stages 2-3, optimizer state on nvme: gradient shards on nvme too (Note [gradients on
  // nvme] in src/engine/grad_reducer.h); false keeps them in host memory.
  bool nvme_gradients = true;
  // Stages 2-3, optimizer state off compute: gradient shards kept in compute memory until
  // the step (Note [gradients kept on compute] in src/engine/grad_reducer.h).
  bool gradient_shards_on_compute = false;
  OptimizerFactory wrap;             // set: this torch::optim optimizer runs the step
  // Note [parameter groups]: torch.optim's param_groups, for what training recipes vary
  // per group: the learning rate (no decay on biases and norms, a smaller lr for the
  // embeddings). The optimizer's type, betas, eps and the state it keeps are one for
  // all; a group has its own lr, as a multiple of the engine's (which the scheduler
  // drives and Engine::set_lr sets), and may have its own weight decay. Empty: one group
  // of every parameter with `optimizer`'s settings. Otherwise every trainable parameter
  // is in exactly one group (frozen ones may be listed too), and Engine::create checks
  // that; group g is index g here.
  struct ParamGroup {
    std::vector<at::Tensor> params;
    double lr_scale = 1.0;
    std::optional<double> weight_decay;  // unset: optimizer.weight_decay
  };
  std::vector<ParamGroup> param_groups;
  // Stage 3: called at every unit access of a training step (a unit's forward, or its
  // backward), before its chunks are gathered: the unit's id and the phase. For diagnostics and for tests that need to act
  // in the middle of a forward or backward (strata train's fault hook); LibTorch's C++
  // modules have no forward hooks of their own. Empty: nothing is called.
  std::function<void(int unit, plan::Phase phase)> on_access;

  static Result<EngineOptions> from_config(const Config& cfg, int world);
  Status validate() const;
  // What a compute device off the CPU needs (validate() runs it when compute_device is
  // set; Engine::create once it has resolved the device from the parameters).
  Status validate_device(c10::Device device) const;
};

}  // namespace strata::engine
