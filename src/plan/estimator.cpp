// The memory estimator; see Note [estimator] in strata/plan/estimator.h.
#include "strata/plan/estimator.h"
#include "strata/plan/schedule.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

namespace strata::plan {

std::string_view to_string(Dtype d) {
  switch (d) {
    case Dtype::kFp32: return "fp32";
    case Dtype::kFp16: return "fp16";
    case Dtype::kBf16: return "bf16";
  }
  return "?";
}

std::uint32_t dtype_bytes(Dtype d) { return d == Dtype::kFp32 ? 4 : 2; }

Status EstimateInput::validate() const {
  if (world < 1) return make_error(ErrorCode::kInvalidArgument, "estimate: world must be >= 1, got {}", world);
  const int per_node = gpus_per_node == 0 ? world : gpus_per_node;
  if (per_node < 1 || world % per_node != 0)
    return make_error(ErrorCode::kInvalidArgument, "estimate: world {} is not a multiple of {} ranks per node", world,
                      per_node);
  if (stage < 0 || stage > 3) return make_error(ErrorCode::kInvalidArgument, "estimate: stage must be 0..3, got {}", stage);
  if (offload_optimizer != OffloadDevice::kNone && stage == 0)
    return make_error(ErrorCode::kInvalidArgument, "estimate: offloading the optimizer needs stage >= 1");
  if (offload_param != OffloadDevice::kNone && stage != 3)
    return make_error(ErrorCode::kInvalidArgument, "estimate: offloading parameters needs stage 3, got stage {}", stage);
  if (optimizer_states < 0 || optimizer_states > 3)
    return make_error(ErrorCode::kInvalidArgument, "estimate: optimizer_states must be 0..3, got {}", optimizer_states);
  if (padded_params != 0 && padded_params < n_params)
    return make_error(ErrorCode::kInvalidArgument, "estimate: padded_params {} < n_params {}", padded_params, n_params);
  // Keep every product below 2^64: 20 bytes per element at most.
  if (std::max(n_params, padded_params) > (std::numeric_limits<std::uint64_t>::max() / 32))
    return make_error(ErrorCode::kOutOfRange, "estimate: {} parameters is too many", n_params);
  return ok();
}

Result<EstimateInput> EstimateInput::from_config(const Config& cfg, std::uint64_t n_params,
                                                std::uint64_t largest_layer_params, int world) {
  EstimateInput in;
  in.n_params = n_params;
  in.largest_layer_params = largest_layer_params;
  in.world = world;
  in.stage = cfg.zero_optimization.stage;
  in.dtype = cfg.bf16.enabled ? Dtype::kBf16 : cfg.fp16.enabled ? Dtype::kFp16 : Dtype::kFp32;
  in.offload_optimizer = cfg.zero_optimization.offload_optimizer.device;
  in.offload_param = cfg.zero_optimization.offload_param.device;
  in.nvme_gradients = cfg.strata.nvme_gradients;
  in.gradient_shards_on_compute = cfg.strata.gradient_shards_on_compute;
  in.optimizer_states = cfg.optimizer.state_tensors();
  in.bf16_optimizer_states = cfg.strata.optimizer_state_dtype == StateDtype::kBf16;
  in.bf16_gradient_shards = cfg.strata.gradient_shard_dtype == StateDtype::kBf16;
  in.optimizer_max_in_cpu = cfg.strata.optimizer_max_in_cpu;
  in.optimizer_buffer_count = cfg.zero_optimization.offload_optimizer.buffer_count;
  in.sub_group_elems = cfg.zero_optimization.sub_group_elems();
  in.param_buffer_count = cfg.zero_optimization.offload_param.buffer_count;
  in.max_in_cpu = cfg.zero_optimization.offload_param.max_in_cpu;
  STRATA_RETURN_IF_ERROR(in.validate());
  return in;
}

std::uint64_t MemoryEstimate::tier_total(Tier t) const {
  std::uint64_t s = 0;
  for (std::uint64_t b : bytes[tier_index(t)]) s += b;
  return s;
}

std::uint64_t MemoryEstimate::kind_total(StateKind k) const {
  std::uint64_t s = 0;
  for (Tier t : kAllTiers) s += at(t, k);
  return s;
}

std::uint64_t MemoryEstimate::total() const {
  std::uint64_t s = 0;
  for (Tier t : kAllTiers) s += tier_total(t);
  return s;
}

namespace {

}  // namespace

Result<MemoryEstimate> estimate_memory(const EstimateInput& in) {
  STRATA_RETURN_IF_ERROR(in.validate());
  MemoryEstimate e;
  auto add = [&e](Tier t, StateKind k, std::uint64_t b) { e.bytes[tier_index(t)][static_cast<std::size_t>(k)] += b; };
  const std::uint64_t lp = dtype_bytes(in.dtype);
  const bool mixed = lp == 2;
  const std::uint64_t P = in.n_params;
  const std::uint64_t padded = in.padded_params == 0 ? P : in.padded_params;
  const auto N = static_cast<std::uint64_t>(in.world);
  const std::uint64_t s = padded / N + (padded % N != 0 ? 1 : 0);  // this rank's shard elements
  const std::uint64_t W = std::max(in.largest_layer_params, in.chunk_elems);
  e.working_set_elems = W;
  const Tier opt_tier = offload_tier(in.offload_optimizer);
  const Tier step_tier = plan::step_tier(opt_tier);
  const Tier param_tier = offload_tier(in.offload_param);
  // fp32 master + the optimizer's states (fp32 or bf16): the engine keeps the master apart from the
  // parameter shard in fp32 too (the step writes the shard from it), unless the shard is
  // made from it.
  const std::uint64_t state_per_elem =
      4 + static_cast<std::uint64_t>(in.optimizer_states) * (in.bf16_optimizer_states ? 2 : 4);
  const bool grads_on_compute = in.gradient_shards_on_compute && in.stage >= 2 && opt_tier != Tier::kCompute;
  const bool grads_on_nvme = !grads_on_compute && in.nvme_gradients && in.stage >= 2 && opt_tier == Tier::kNvme;
  // Where the gradient shards of the state on nvme and of the state kept on host live.
  const Tier grad_tier = grads_on_compute ? Tier::kCompute : grads_on_nvme ? Tier::kNvme : step_tier;
  const Tier grad_in_cpu_tier = grads_on_compute ? Tier::kCompute : Tier::kHost;
  const std::uint64_t grad_per_elem = in.bf16_gradient_shards ? 2 : 4;  // the step's gradient shard
  // strata.optimizer_max_in_cpu: this many state elements (and their gradient shards)
  // stay on host.
  const std::uint64_t state_elems = in.stage == 0 ? P : s;
  const std::uint64_t opt_in_cpu = opt_tier == Tier::kNvme ? std::min(in.optimizer_max_in_cpu, state_elems) : 0;

  // params
  if (in.stage < 3) {
    add(Tier::kCompute, StateKind::kParams, lp * P);
  } else {
    // Shard and state on host: the shard is made from the master (Note [shard from
    // master] in src/engine/placement.cpp).
    // nvme: max_in_cpu elements stay on host (approximately: the engine keeps whole chunks).
    const std::uint64_t in_cpu = param_tier == Tier::kNvme ? std::min(in.max_in_cpu, s) : 0;
    if (!(param_tier == Tier::kHost && opt_tier == Tier::kHost)) add(param_tier, StateKind::kParams, lp * (s - in_cpu));
    add(Tier::kHost, StateKind::kParams, lp * in_cpu);
    add(Tier::kCompute, StateKind::kParams, lp * W);
  }
  // grads
  switch (in.stage) {
    case 0:
      add(Tier::kCompute, StateKind::kGrads, lp * P);
      if (mixed) add(step_tier, StateKind::kGrads, grad_per_elem * P);
      break;
    case 1:
      add(Tier::kCompute, StateKind::kGrads, lp * P);
      if (mixed) add(step_tier, StateKind::kGrads, grad_per_elem * s);
      break;
    case 2:
      if (mixed && opt_tier == Tier::kCompute) add(Tier::kCompute, StateKind::kGrads, lp * s);
      add(grad_tier, StateKind::kGrads, grad_per_elem * (s - opt_in_cpu));
      add(grad_in_cpu_tier, StateKind::kGrads, grad_per_elem * opt_in_cpu);
      break;
    default:
      add(Tier::kCompute, StateKind::kGrads, lp * W);
      add(grad_tier, StateKind::kGrads, grad_per_elem * (s - opt_in_cpu));
      add(grad_in_cpu_tier, StateKind::kGrads, grad_per_elem * opt_in_cpu);
      break;
  }
  // optimizer state
  add(opt_tier, StateKind::kOptimizer, state_per_elem * (state_elems - opt_in_cpu));
  add(Tier::kHost, StateKind::kOptimizer, state_per_elem * opt_in_cpu);
  // Staging buffers, in shards of the working set.
  const std::uint64_t w_shard = W / N + (W % N != 0 ? 1 : 0);
  // nvme optimizer state: the staging pool, buffer_count sub-group buffers of master,
  // state and (on nvme) gradient (Note [nvme optimizer state]); nvme gradients: up to
  // three shards being completed or written (Note [gradients on nvme]).
  if (opt_tier == Tier::kNvme) {
    const auto count = static_cast<std::uint64_t>(in.optimizer_buffer_count);
    add(Tier::kHost, StateKind::kBuffers,
        count * (state_per_elem + (grads_on_nvme ? grad_per_elem : 0)) * std::min(w_shard, in.sub_group_elems));
  }
  if (grads_on_nvme) add(Tier::kHost, StateKind::kBuffers, 3 * grad_per_elem * w_shard);
  // Kept on compute: the step copies one chunk's shard at a time into a host buffer.
  if (grads_on_compute) add(Tier::kHost, StateKind::kBuffers, grad_per_elem * w_shard);
  // A shard away from the step: the step writes the new shard into a staging shard; to
  // nvme, with two more being written and the Load pool (Note [nvme parameter staging]
  // in src/engine/gatherer.h).
  const Tier shard_tier = in.stage < 3 ? Tier::kCompute : param_tier;
  if (in.stage > 0 && shard_tier != step_tier) add(Tier::kHost, StateKind::kBuffers, lp * w_shard);
  if (in.stage == 3 && param_tier == Tier::kNvme)
    add(Tier::kHost, StateKind::kBuffers, (2 + static_cast<std::uint64_t>(in.param_buffer_count)) * lp * w_shard);
  // Anything on nvme: the swap store's own pool (io::SwapStoreOptions::pool_bytes).
  if (opt_tier == Tier::kNvme || (in.stage == 3 && param_tier == Tier::kNvme))
    add(Tier::kHost, StateKind::kBuffers, in.swap_pool_bytes);
  return e;
}

Result<DeepSpeedEstimate> deepspeed_estimate(const EstimateInput& in, bool zero_init, double additional_buffer_factor) {
  STRATA_RETURN_IF_ERROR(in.validate());
  DeepSpeedEstimate d;
  const double P = static_cast<double>(in.n_params);
  const std::uint64_t Pi = in.n_params;
  const auto total_gpus = static_cast<std::uint64_t>(in.world);
  const int per_node = in.gpus_per_node == 0 ? in.world : in.gpus_per_node;
  const double nodes = static_cast<double>(in.world / per_node);
  const double f = additional_buffer_factor;
  const bool cpu_offload = in.offload_optimizer != OffloadDevice::kNone;
  const bool cpu_offload_params = in.offload_param != OffloadDevice::kNone;
  auto trunc = [](double x) { return static_cast<std::uint64_t>(x); };  // Python's int()
  if (in.stage == 2) {
    d.applicable = true;
    d.function = "estimate_zero2_model_states_mem_needs";
    if (cpu_offload) {
      d.gpu_bytes = 2 * Pi;
      d.cpu_bytes = trunc(P * std::max(4.0 * static_cast<double>(total_gpus), 16.0) * f);
    } else {
      d.gpu_bytes = 2 * Pi + 18 * Pi / total_gpus;
      d.cpu_bytes = trunc(P * 4 * per_node * f);
    }
  } else if (in.stage == 3 && !(cpu_offload_params && !cpu_offload)) {
    d.applicable = true;
    d.function = "estimate_zero3_model_states_mem_needs";
    const std::uint64_t L = in.largest_layer_params;
    const double gpus_factor = 1.0 / nodes;
    const std::uint64_t largest_layer_memory = 4 * L;
    if (cpu_offload) {
      const double k = cpu_offload_params ? 18.0 : 16.0;
      d.gpu_bytes = largest_layer_memory + (cpu_offload_params ? 0 : 2 * Pi / total_gpus);
      d.cpu_bytes = zero_init ? trunc(P * k * gpus_factor * f)
                              : trunc(P * std::max(4.0 * per_node, k * gpus_factor) * f);
    } else {
      d.gpu_bytes = largest_layer_memory + 18 * Pi / total_gpus;
      d.cpu_bytes = zero_init ? trunc(static_cast<double>(L) * 4 * per_node * f) : trunc(P * 4 * per_node * f);
    }
  }
  return d;
}

ModelShape gpt_shape(std::uint64_t layers, std::uint64_t hidden) {
  constexpr std::uint64_t kVocab = 50257, kPositions = 1024;
  const std::uint64_t H = hidden;
  ModelShape m;
  m.name = "gpt:" + std::to_string(layers) + "x" + std::to_string(hidden);
  m.hidden = H;
  m.param_sizes = {kVocab * H, kPositions * H};  // token embedding (tied LM head), positions
  for (std::uint64_t l = 0; l < layers; ++l) {
    for (std::uint64_t n : {H, H,                    // ln_1 weight, bias
                            3 * H * H, 3 * H,        // attention qkv
                            H * H, H,                // attention output projection
                            H, H,                    // ln_2
                            4 * H * H, 4 * H,        // MLP up
                            4 * H * H, H})           // MLP down
      m.param_sizes.push_back(n);
  }
  m.param_sizes.push_back(H);  // ln_f weight, bias
  m.param_sizes.push_back(H);
  for (std::uint64_t n : m.param_sizes) m.n_params += n;
  // DeepSpeed's largest layer: the most parameters one module owns directly.
  m.largest_layer_params = std::max({kVocab * H, kPositions * H, 4 * H * H + 4 * H, 3 * H * H + 3 * H});
  return m;
}

Result<ModelShape> parse_model_spec(std::string_view spec) {
  auto bad = [&] {
    return make_error(ErrorCode::kInvalidArgument, "model \"{}\": expected gpt:<layers>x<hidden>, e.g. gpt:12x768", spec);
  };
  if (!spec.starts_with("gpt:")) return bad();
  const std::string_view dims = spec.substr(4);
  const std::size_t x = dims.find('x');
  if (x == std::string_view::npos) return bad();
  std::uint64_t layers = 0, hidden = 0;
  auto parse = [](std::string_view t, std::uint64_t& out) {
    auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), out);
    return ec == std::errc{} && p == t.data() + t.size() && out > 0;
  };
  if (!parse(dims.substr(0, x), layers) || !parse(dims.substr(x + 1), hidden)) return bad();
  if (hidden > (1u << 20) || layers > (1u << 16))
    return make_error(ErrorCode::kOutOfRange, "model \"{}\": at most 65536 layers and hidden 1048576", spec);
  return gpt_shape(layers, hidden);
}

}  // namespace strata::plan
