// Memory estimator: per-rank bytes of model state in each tier, before anything runs.
//
//   plan::EstimateInput in{.n_params = 7'000'000'000, .largest_layer_params = 200'000'000,
//                          .world = 8, .stage = 3, .offload_optimizer = OffloadDevice::kNvme};
//   STRATA_ASSIGN_OR_RETURN(plan::MemoryEstimate e, plan::estimate_memory(in));
//   e.at(plan::Tier::kCompute, plan::StateKind::kParams);   // bytes per rank
//   STRATA_ASSIGN_OR_RETURN(plan::DeepSpeedEstimate ds, plan::deepspeed_estimate(in));
//
// Accounting per rank (Note [estimator]; P params, N = world, s = P'/N with P' the
// element count after chunk padding, lp = 2 for fp16/bf16 or 4 for fp32, W the gathered
// working set = the largest layer, or one chunk if larger; Adam's optimizer state):
//   params     stage 0-2: lp*P on compute.  stage 3: lp*s at the param tier, plus the
//              gathered working set lp*W on compute.
//   grads      stage 0-1: lp*P on compute, plus the fp32 copy (4P at stage 0, 4s at 1) where
//              the step runs when lp = 2.  stage 2: lp*s on compute for the reduce-scattered
//              low-precision shard when the optimizer is not offloaded (held until the
//              step, as DeepSpeed counts it), plus the fp32 shard 4s where the step runs.
//              stage 3: the working set's grad buffer lp*W on compute, plus the fp32
//              shard 4s where the step runs (the reduce-scatter lands in it directly).
//   optimizer  fp32 master + the optimizer's states (Adam's m + v: 12 bytes per element,
//              8 with bf16 states; Lion's m: 8), sharded
//              (s) from stage 1, unsharded (P) at stage 0, at the optimizer tier.
//   buffers    offloaded to nvme: host staging for one chunk's optimizer state (state
//              bytes of W/N elements); params on nvme: two param shards of W/N elements.
// The step runs on compute when the optimizer state is there, else on host.
// With these terms the compute tier equals DeepSpeed's GPU formulas exactly: ZeRO-2
// 2P + 18P/N (no offload) and 2P (cpu offload); ZeRO-3 4L + 18P/N, 4L + 2P/N (optimizer
// offload) and 4L (both offloaded), where L is the largest layer and P' = P. DeepSpeed's
// CPU figures differ on purpose; docs/architecture.md explains how.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "strata/base/config.h"
#include "strata/base/status.h"
#include "strata/plan/tier.h"

namespace strata::plan {

enum class Dtype : std::uint8_t { kFp32, kFp16, kBf16 };
std::string_view to_string(Dtype d);
std::uint32_t dtype_bytes(Dtype d);


struct EstimateInput {
  std::uint64_t n_params = 0;             // P; shared parameters counted once
  std::uint64_t padded_params = 0;        // P' after chunk padding; 0 = P
  std::uint64_t largest_layer_params = 0; // L: the most parameters one module owns
  std::uint64_t chunk_elems = 0;          // chunk size if known; W = max(L, chunk)
  int world = 1;
  int gpus_per_node = 0;                  // 0 = world (one node)
  int stage = 0;
  Dtype dtype = Dtype::kFp16;
  OffloadDevice offload_optimizer = OffloadDevice::kNone;
  OffloadDevice offload_param = OffloadDevice::kNone;
  // Stages 2-3 with the optimizer on nvme: fp32 gradient shards on nvme as well
  // (strata.nvme_gradients; Note [gradients on nvme]).
  bool nvme_gradients = true;
  // Stages 2-3 with the optimizer off compute: gradient shards kept in compute memory
  // until the step (strata.gradient_shards_on_compute; Note [gradients kept on compute]).
  bool gradient_shards_on_compute = false;
  // The optimizer's state tensors per element besides the master (OptimizerConfig::
  // state_tensors: Adam's m and v 2, Lion's m 1, ...), in fp32 or bf16
  // (strata.optimizer_state_dtype); the master is fp32.
  int optimizer_states = 2;
  bool bf16_optimizer_states = false;
  // The gradient shards the step reads in fp32 or bf16 (strata.gradient_shard_dtype).
  bool bf16_gradient_shards = false;
  // nvme optimizer state: the elements kept on host instead (strata.optimizer_max_in_cpu;
  // approximately: the engine keeps whole chunks).
  std::uint64_t optimizer_max_in_cpu = 0;
  // nvme optimizer state: the staging pool's buffers (offload_optimizer.buffer_count), each
  // one sub-group of at most sub_group_elems (zero_optimization.sub_group_size).
  int optimizer_buffer_count = 4;
  std::uint64_t sub_group_elems = 1'000'000'000;
  // nvme parameters: the Load staging pool (offload_param.buffer_count), and the shard
  // elements kept on host instead (offload_param.max_in_cpu).
  int param_buffer_count = 5;
  std::uint64_t max_in_cpu = 0;
  std::uint64_t swap_pool_bytes = std::uint64_t{64} << 20;  // the swap store's pool

  Status validate() const;
  // Stage, dtype (bf16/fp16 sections) and offload devices from a config.
  static Result<EstimateInput> from_config(const Config& cfg, std::uint64_t n_params,
                                           std::uint64_t largest_layer_params, int world);
};

struct MemoryEstimate {
  // bytes[tier][kind], per rank.
  std::array<std::array<std::uint64_t, kNumStateKinds>, kNumTiers> bytes{};
  std::uint64_t working_set_elems = 0;  // W

  std::uint64_t at(Tier t, StateKind k) const { return bytes[tier_index(t)][static_cast<std::size_t>(k)]; }
  std::uint64_t tier_total(Tier t) const;
  std::uint64_t kind_total(StateKind k) const;
  std::uint64_t total() const;
};

Result<MemoryEstimate> estimate_memory(const EstimateInput& in);

// DeepSpeed's published estimators (estimate_zero2_model_states_mem_needs and
// estimate_zero3_model_states_mem_needs), reproduced for comparison. nvme offload counts
// as cpu offload (DeepSpeed's estimator has no nvme variant). Stage 2 ignores
// offload_param; stages 0 and 1 have no DeepSpeed formula (applicable = false).
struct DeepSpeedEstimate {
  bool applicable = false;
  std::uint64_t gpu_bytes = 0;   // per GPU
  std::uint64_t cpu_bytes = 0;   // per node, with the additional buffer factor
  std::string function;          // which DeepSpeed function this mirrors
};
Result<DeepSpeedEstimate> deepspeed_estimate(const EstimateInput& in, bool zero_init = true,
                                             double additional_buffer_factor = 1.5);

// Parameter sizes of a model named on the command line, in registration (= first-use)
// order: "gpt:<layers>x<hidden>" is GPT-2 style (vocab 50257 tied with the LM head,
// 1024 positions, per block 2 LayerNorms, qkv, proj, MLP 4x; a final LayerNorm).
struct ModelShape {
  std::string name;
  std::vector<std::uint64_t> param_sizes;
  std::uint64_t n_params = 0;
  std::uint64_t largest_layer_params = 0;
  std::uint64_t hidden = 0;
};
ModelShape gpt_shape(std::uint64_t layers, std::uint64_t hidden);
Result<ModelShape> parse_model_spec(std::string_view spec);

}  // namespace strata::plan
