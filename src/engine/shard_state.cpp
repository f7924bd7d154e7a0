#include "shard_state.h"

#include "io_tensor.h"

#include <algorithm>
#include <cassert>
#include <cmath>

#include <ATen/ATen.h>

#include "strata/comm/communicator.h"

namespace strata::engine {
namespace {

kernels::DType kernel_state_dtype(at::ScalarType t) {
  return t == at::kBFloat16 ? kernels::DType::kBF16 : kernels::DType::kF32;
}

}  // namespace

Result<StepKernel> StepKernel::create(const OptimizerConfig& cfg, at::ScalarType state_dtype) {
  if (state_dtype != at::kFloat && state_dtype != at::kBFloat16) {
    return make_error(ErrorCode::kInvalidArgument, "optimizer state must be fp32 or bf16, not {}",
                      c10::toString(state_dtype));
  }
  StepKernel k;
  k.state_dtype_ = state_dtype;
  k.type_ = cfg.effective_type();
  switch (k.type_) {
    case OptimizerType::kAdam:
    case OptimizerType::kAdamW:
      k.adam_ = {.lr = cfg.lr, .beta1 = cfg.betas[0], .beta2 = cfg.betas[1], .eps = cfg.eps,
                 .weight_decay = cfg.weight_decay, .decoupled_weight_decay = k.type_ == OptimizerType::kAdamW,
                 .amsgrad = cfg.amsgrad};
      k.names_ = {"exp_avg", "exp_avg_sq"};
      if (cfg.amsgrad) k.names_.push_back("max_exp_avg_sq");
      break;
    case OptimizerType::kSGD:
      if (cfg.nesterov && (cfg.momentum <= 0 || cfg.dampening != 0)) {
        return make_error(ErrorCode::kInvalidArgument, "optimizer: nesterov needs momentum > 0 and dampening 0");
      }
      k.sgd_ = {.lr = cfg.lr, .momentum = cfg.momentum, .dampening = cfg.dampening,
                .weight_decay = cfg.weight_decay, .nesterov = cfg.nesterov};
      if (cfg.momentum != 0) k.names_ = {"momentum_buffer"};
      break;
    case OptimizerType::kAdagrad:
      k.adagrad_ = {.lr = cfg.lr, .lr_decay = cfg.lr_decay, .weight_decay = cfg.weight_decay, .eps = cfg.eps};
      k.initial_accumulator_ = cfg.initial_accumulator_value;
      k.names_ = {"sum"};
      break;
    case OptimizerType::kLion:
      k.lion_ = {.lr = cfg.lr, .beta1 = cfg.betas[0], .beta2 = cfg.betas[1], .weight_decay = cfg.weight_decay};
      k.names_ = {"exp_avg"};
      break;
    case OptimizerType::kLamb:
      k.lamb_ = {.lr = cfg.lr, .beta1 = cfg.betas[0], .beta2 = cfg.betas[1], .eps = cfg.eps,
                 .weight_decay = cfg.weight_decay, .max_coeff = cfg.max_coeff, .min_coeff = cfg.min_coeff,
                 .bias_correction = cfg.bias_correction};
      k.names_ = {"exp_avg", "exp_avg_sq"};
      break;
  }
  assert(k.names_.size() == static_cast<std::size_t>(cfg.state_tensors()));  // what estimates count
  return k;
}

double StepKernel::initial_value(std::size_t) const {
  return type_ == OptimizerType::kAdagrad ? initial_accumulator_ : 0.0;
}

double StepKernel::lr() const {
  switch (type_) {
    case OptimizerType::kSGD: return sgd_.lr;
    case OptimizerType::kAdagrad: return adagrad_.lr;
    case OptimizerType::kLion: return lion_.lr;
    case OptimizerType::kLamb: return lamb_.lr;
    default: return adam_.lr;
  }
}

void StepKernel::set_lr(double lr) { adam_.lr = sgd_.lr = adagrad_.lr = lion_.lr = lamb_.lr = lr; }
double StepKernel::weight_decay() const {
  switch (type_) {
    case OptimizerType::kSGD: return sgd_.weight_decay;
    case OptimizerType::kAdagrad: return adagrad_.weight_decay;
    case OptimizerType::kLion: return lion_.weight_decay;
    case OptimizerType::kLamb: return lamb_.weight_decay;
    default: return adam_.weight_decay;
  }
}
std::array<double, 2> StepKernel::betas() const {
  if (type_ == OptimizerType::kLion) return {lion_.beta1, lion_.beta2};
  if (type_ == OptimizerType::kLamb) return {lamb_.beta1, lamb_.beta2};
  return {adam_.beta1, adam_.beta2};
}
void StepKernel::set_betas(std::array<double, 2> betas) {
  adam_.beta1 = lion_.beta1 = lamb_.beta1 = betas[0];
  adam_.beta2 = lion_.beta2 = lamb_.beta2 = betas[1];
}

void StepKernel::set_groups(std::vector<Group> groups, std::vector<std::uint32_t> group_of) {
  groups_ = groups.empty() ? std::vector<Group>{Group{}} : std::move(groups);
  group_of_ = std::move(group_of);
}

Status StepKernel::run(std::int64_t n, float* master, std::vector<void*> states, const void* grad,
                       kernels::DType grad_dtype, void* param, kernels::DType param_dtype,
                       const kernels::StepInfo& info, ThreadPool* pool, std::uint32_t group) const {
  kernels::StepShard shard{.n = static_cast<std::size_t>(n), .master = master, .grad = grad, .grad_dtype = grad_dtype,
                           .param = param, .param_dtype = param_dtype,
                           .state_dtype = kernel_state_dtype(state_dtype_)};
  switch (type_) {
    case OptimizerType::kAdam:
    case OptimizerType::kAdamW: {
      kernels::AdamState s{.exp_avg = states[0], .exp_avg_sq = states[1],
                           .max_exp_avg_sq = states.size() > 2 ? states[2] : nullptr};
      return kernels::adam_step(shard, s, for_group(adam_, group), info, pool);
    }
    case OptimizerType::kSGD:
      return kernels::sgd_step(shard, states.empty() ? nullptr : states[0], for_group(sgd_, group), info, pool);
    case OptimizerType::kAdagrad:
      return kernels::adagrad_step(shard, states[0], for_group(adagrad_, group), info, pool);
    case OptimizerType::kLion:
      return kernels::lion_step(shard, states[0], for_group(lion_, group), info, pool);
    case OptimizerType::kLamb: break;
  }
  return make_error(ErrorCode::kInternal, "StepKernel::run: {} does not step in one pass", to_string(type_));
}

Result<kernels::LambSums> StepKernel::lamb_moments(std::int64_t n, float* master, std::vector<void*> states,
                                                   const void* grad, kernels::DType grad_dtype,
                                                   const kernels::StepInfo& info, ThreadPool* pool,
                                                   std::uint32_t group) const {
  const kernels::StepShard shard{.n = static_cast<std::size_t>(n), .master = master, .grad = grad,
                                 .grad_dtype = grad_dtype, .state_dtype = kernel_state_dtype(state_dtype_)};
  return kernels::lamb_moments(shard, {.exp_avg = states[0], .exp_avg_sq = states[1]}, for_group(lamb_, group), info,
                               pool);
}

Status StepKernel::lamb_apply(std::int64_t n, float* master, std::vector<void*> states, void* param,
                              kernels::DType param_dtype, const kernels::StepInfo& info, double ratio,
                              ThreadPool* pool, std::uint32_t group) const {
  const kernels::StepShard shard{.n = static_cast<std::size_t>(n), .master = master, .param = param,
                                 .param_dtype = param_dtype, .state_dtype = kernel_state_dtype(state_dtype_)};
  return kernels::lamb_apply(shard, {.exp_avg = states[0], .exp_avg_sq = states[1]}, for_group(lamb_, group), info,
                             ratio, pool);
}

double StepKernel::lamb_ratio(const kernels::LambSums& whole, std::uint32_t group) const {
  return kernels::lamb_ratio(whole, for_group(lamb_, group));
}

ShardState ShardState::make(std::int64_t n, const StepKernel& kernel) {
  ShardState s = uninitialized(n, kernel);
  s.master.zero_();
  for (std::size_t i = 0; i < s.states.size(); ++i) s.states[i].fill_(kernel.initial_value(i));
  return s;
}

ShardState ShardState::uninitialized(std::int64_t n, const StepKernel& kernel) {
  ShardState s;
  s.master = aligned_empty(n, at::kFloat);  // swap records (io_tensor.h)
  for (std::size_t i = 0; i < kernel.state_names().size(); ++i) s.states.push_back(aligned_empty(n, kernel.state_dtype()));
  return s;
}

ShardState ShardState::to(c10::Device device) const {
  ShardState s{.master = master.to(device)};
  for (const auto& t : states) s.states.push_back(t.to(device));
  return s;
}

std::uint64_t ShardState::bytes() const {
  std::uint64_t b = master.numel() * 4;
  for (const auto& t : states) b += t.numel() * t.element_size();
  return b;
}

Status ParamSteps::sync(const std::vector<std::uint8_t>& local, comm::Communicator& comm) {
  if (std::all_of(ever_had_grad.begin(), ever_had_grad.end(), [](std::uint8_t f) { return f != 0; })) return ok();
  at::Tensor flags = at::empty({static_cast<std::int64_t>(local.size())}, at::kByte);
  std::copy(local.begin(), local.end(), flags.data_ptr<std::uint8_t>());
  STRATA_RETURN_IF_ERROR(comm.all_reduce(flags, comm::ReduceOp::kMax).wait());
  const std::uint8_t* f = flags.data_ptr<std::uint8_t>();
  for (std::size_t i = 0; i < ever_had_grad.size(); ++i) ever_had_grad[i] |= f[i];
  return ok();
}

std::vector<ElemRange> sub_groups(std::int64_t n, std::int64_t sub_group_elems) {
  std::vector<ElemRange> out;
  for (std::int64_t b = 0; b < n; b += sub_group_elems) out.push_back({b, std::min(n, b + sub_group_elems)});
  if (out.empty()) out.push_back({0, 0});
  return out;
}

void ParamSteps::advance() {
  for (std::size_t i = 0; i < steps.size(); ++i) steps[i] += ever_had_grad[i];
}

namespace {

// A run of adjacent parameters at the same step count and of one group, within a
// range: one kernel call.
struct StepRun {
  ElemRange elems;
  std::int64_t step = 0;
  std::uint32_t group = 0;
  std::size_t param = 0;  // the store index of its first parameter
};

// per_param: one run per parameter (Lamb: each has its own trust ratio).
std::vector<StepRun> step_runs(const std::vector<ChunkStore::ShardSlot>& sl, const ParamSteps& params,
                               const StepKernel& kernel, ElemRange range, bool per_param = false) {
  // A slot's elements within the range.
  auto lo = [&](std::size_t i) { return std::max(sl[i].shard_offset, range.begin); };
  auto hi = [&](std::size_t i) { return std::min(sl[i].shard_offset + sl[i].numel, range.end); };
  std::vector<StepRun> runs;
  for (std::size_t i = 0; i < sl.size();) {
    if (!params.ever_had_grad[sl[i].param] || lo(i) >= hi(i)) {
      ++i;
      continue;
    }
    const std::int64_t step = params.steps[sl[i].param] + 1, begin = lo(i);
    const std::uint32_t group = kernel.group_of(sl[i].param);
    std::int64_t end = hi(i);
    std::size_t j = i + 1;
    while (!per_param && j < sl.size() && sl[j].shard_offset == end && end < range.end && params.ever_had_grad[sl[j].param] &&
           params.steps[sl[j].param] + 1 == step && kernel.group_of(sl[j].param) == group) {
      end = hi(j);
      ++j;
    }
    runs.push_back({.elems = {begin, end}, .step = step, .group = group, .param = sl[i].param});
    i = j;
  }
  return runs;
}

// The state tensors' addresses at element `at`.
std::vector<void*> state_ptrs(ShardState& s, std::int64_t at) {
  std::vector<void*> out;
  for (auto& t : s.states) out.push_back(static_cast<std::byte*>(t.data_ptr()) + at * t.element_size());
  return out;
}

}  // namespace

Status step_shard(const StepKernel& kernel, ShardState& s, const std::vector<ChunkStore::ShardSlot>& sl,
                  const ParamSteps& params, const at::Tensor& grad, const at::Tensor& param, double grad_scale,
                  bool tensor_ops, ThreadPool* pool, std::vector<ElemRange>* stepped, ElemRange range) {
  tensor_ops = tensor_ops || !s.master.device().is_cpu();
  kernels::DType grad_dtype{}, param_dtype{};
  if (!tensor_ops) {
    STRATA_ASSIGN_OR_RETURN(grad_dtype, kernel_dtype(grad.scalar_type()));
    if (param.defined()) {
      STRATA_ASSIGN_OR_RETURN(param_dtype, kernel_dtype(param.scalar_type()));
    }
  }
  for (const StepRun& run : step_runs(sl, params, kernel, range)) {
    const std::int64_t at = run.elems.begin - range.begin, n = run.elems.size();  // at: in the sub-group's tensors
    const kernels::StepInfo info{.step = run.step, .grad_scale = grad_scale};
    if (tensor_ops) {
      std::vector<at::Tensor> states;
      for (auto& t : s.states) states.push_back(t.narrow(0, at, n));
      STRATA_RETURN_IF_ERROR(kernel.run_tensors(s.master.narrow(0, at, n), states, grad.narrow(0, at, n),
                                                param.defined() ? param.narrow(0, run.elems.begin, n) : at::Tensor(),
                                                info, run.group));
    } else {
      const auto* g = static_cast<const std::byte*>(grad.data_ptr()) + at * grad.element_size();
      void* p = param.defined() ? static_cast<std::byte*>(param.data_ptr()) + run.elems.begin * param.element_size()
                                : nullptr;
      STRATA_RETURN_IF_ERROR(kernel.run(n, s.master.data_ptr<float>() + at, state_ptrs(s, at), g, grad_dtype, p,
                                        param_dtype, info, pool, run.group));
    }
    if (stepped != nullptr) stepped->push_back(run.elems);
  }
  return ok();
}

Status lamb_moments_shard(const StepKernel& kernel, ShardState& s, const std::vector<ChunkStore::ShardSlot>& sl,
                          const ParamSteps& params, const at::Tensor& grad, double grad_scale, bool tensor_ops,
                          ThreadPool* pool, ElemRange range, LambNorms& norms) {
  tensor_ops = tensor_ops || !s.master.device().is_cpu();
  kernels::DType grad_dtype{};
  if (!tensor_ops) {
    STRATA_ASSIGN_OR_RETURN(grad_dtype, kernel_dtype(grad.scalar_type()));
  }
  for (const StepRun& run : step_runs(sl, params, kernel, range, /*per_param=*/true)) {
    const std::int64_t at = run.elems.begin - range.begin, n = run.elems.size();
    const kernels::StepInfo info{.step = run.step, .grad_scale = grad_scale};
    if (tensor_ops) {
      std::vector<at::Tensor> states;
      for (auto& t : s.states) states.push_back(t.narrow(0, at, n));
      STRATA_ASSIGN_OR_RETURN(at::Tensor piece, kernel.lamb_moments_tensors(s.master.narrow(0, at, n), states,
                                                                            grad.narrow(0, at, n), info, run.group));
      norms.add(run.param, std::move(piece));
    } else {
      const auto* g = static_cast<const std::byte*>(grad.data_ptr()) + at * grad.element_size();
      STRATA_ASSIGN_OR_RETURN(kernels::LambSums piece,
                              kernel.lamb_moments(n, s.master.data_ptr<float>() + at, state_ptrs(s, at), g, grad_dtype,
                                                  info, pool, run.group));
      norms.add(run.param, piece);
    }
  }
  return ok();
}

std::vector<kernels::LambSums>& LambNorms::settle() {
  std::vector<bool> done(pending_.size());
  for (std::size_t i = 0; i < pending_.size(); ++i) {
    if (done[i]) continue;
    // Every pending piece on this one's device, stacked there and copied over at once.
    const c10::Device device = pending_[i].second.device();
    std::vector<std::size_t> mine;
    std::vector<at::Tensor> rows;
    for (std::size_t j = i; j < pending_.size(); ++j) {
      if (done[j] || pending_[j].second.device() != device) continue;
      done[j] = true;
      mine.push_back(j);
      rows.push_back(pending_[j].second);
    }
    const at::Tensor host = at::stack(rows).cpu();
    const double* v = host.data_ptr<double>();
    for (std::size_t r = 0; r < mine.size(); ++r) sums_[pending_[mine[r]].first].merge({.p_sq = v[2 * r], .u_sq = v[2 * r + 1]});
  }
  pending_.clear();
  return sums_;
}

Status lamb_apply_shard(const StepKernel& kernel, ShardState& s, const std::vector<ChunkStore::ShardSlot>& sl,
                        const ParamSteps& params, const at::Tensor& param, bool tensor_ops, ThreadPool* pool,
                        std::vector<ElemRange>* stepped, ElemRange range, const std::vector<double>& ratios) {
  tensor_ops = tensor_ops || !s.master.device().is_cpu();
  kernels::DType param_dtype{};
  if (!tensor_ops && param.defined()) {
    STRATA_ASSIGN_OR_RETURN(param_dtype, kernel_dtype(param.scalar_type()));
  }
  for (const StepRun& run : step_runs(sl, params, kernel, range, /*per_param=*/true)) {
    const std::int64_t at = run.elems.begin - range.begin, n = run.elems.size();
    const kernels::StepInfo info{.step = run.step};
    if (tensor_ops) {
      std::vector<at::Tensor> states;
      for (auto& t : s.states) states.push_back(t.narrow(0, at, n));
      STRATA_RETURN_IF_ERROR(kernel.lamb_apply_tensors(s.master.narrow(0, at, n), states,
                                                       param.defined() ? param.narrow(0, run.elems.begin, n) : at::Tensor(),
                                                       info, ratios[run.param], run.group));
    } else {
      void* p = param.defined() ? static_cast<std::byte*>(param.data_ptr()) + run.elems.begin * param.element_size()
                                : nullptr;
      STRATA_RETURN_IF_ERROR(kernel.lamb_apply(n, s.master.data_ptr<float>() + at, state_ptrs(s, at), p, param_dtype,
                                               info, ratios[run.param], pool, run.group));
    }
    if (stepped != nullptr) stepped->push_back(run.elems);
  }
  return ok();
}

Result<kernels::GradStats> all_reduce_stats(const kernels::GradStats& local, comm::Communicator& comm) {
  at::Tensor sums = at::tensor({local.l1, local.l2_sq}, at::kDouble);
  at::Tensor maxes = at::tensor({local.linf, local.nonfinite ? 1.0 : 0.0}, at::kDouble);
  comm::Handle h1 = comm.all_reduce(sums, comm::ReduceOp::kSum);
  comm::Handle h2 = comm.all_reduce(maxes, comm::ReduceOp::kMax);
  STRATA_RETURN_IF_ERROR(h1.wait());
  STRATA_RETURN_IF_ERROR(h2.wait());
  kernels::GradStats global;
  global.l1 = sums[0].item<double>();
  global.l2_sq = sums[1].item<double>();
  global.linf = maxes[0].item<double>();
  global.nonfinite = maxes[1].item<double>() != 0 || !std::isfinite(global.l2_sq);
  return global;
}

}  // namespace strata::engine
