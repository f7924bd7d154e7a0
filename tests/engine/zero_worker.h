// What the zero_worker modes share (zero_worker.cpp, zero_worker_ckpt.cpp): the
// reference (the toy model trained unsharded by plain torch::optim on the whole job's
// batch), the comparisons against it, and the engine options the modes build on.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include "strata/comm/torch_compat.h"
#include "strata/engine/engine.h"
#include "strata/engine/lamb.h"
#include "strata/engine/lion.h"
#include "support/worker.h"
#include "bf16_state_reference.h"
#include "toy_model.h"

namespace strata::testing::zero {

using strata::testing::fail;
using strata::testing::rel_error;
using strata::testing::rel_l2_error;
using strata::testing::toy_batch;
using strata::testing::ToyModel;

using strata::testing::kBf16StateTol;
using strata::testing::kBf16StateWholeTol;
// bf16 gradient shards against the reference with its gradients rounded alike: both
// round fp32 gradients that can differ by an fp32 rounding (summation order), so one
// can land a bf16 step away now and then. Measured after 20 AdamW steps: 2.7e-6 at
// world 1 and 7.1e-6 at world 2 from the rounded reference, 8e-4 from the plain one.
inline constexpr double kBf16GradsTol = 1e-4;
using strata::testing::round_state_to_bf16;

inline comm::Communicator& world_comm() { return *worker_comm(); }

inline constexpr std::int64_t kRowsPerRank = 6;

inline OptimizerConfig optim_config(const std::string& name) {
  OptimizerConfig c;
  c.lr = 1e-2;
  if (name == "adam") c.type = OptimizerType::kAdam, c.adam_w_mode = false, c.weight_decay = 0.01;
  else if (name == "adamw") c.type = OptimizerType::kAdamW, c.weight_decay = 0.05;
  else if (name == "sgd") c.type = OptimizerType::kSGD, c.momentum = 0.9, c.nesterov = true, c.weight_decay = 0.01;
  else if (name == "adagrad") c.type = OptimizerType::kAdagrad, c.lr_decay = 0.01, c.weight_decay = 0.01, c.eps = 1e-10;
  else if (name == "lion") c.type = OptimizerType::kLion, c.lr = 1e-4, c.betas = {0.9, 0.99}, c.weight_decay = 0.1;
  else if (name == "lamb") c.type = OptimizerType::kLamb, c.lr = 2e-3, c.weight_decay = 0.01, c.max_coeff = 5.0;
  else fail("unknown optimizer " + name);
  return c;
}

inline std::unique_ptr<torch::optim::Optimizer> torch_optimizer(const OptimizerConfig& c, std::vector<at::Tensor> params) {
  const auto betas = std::make_tuple(c.betas[0], c.betas[1]);
  switch (c.effective_type()) {
    case OptimizerType::kAdam:
      return std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(c.lr).betas(betas).eps(c.eps).weight_decay(c.weight_decay));
    case OptimizerType::kAdamW:
      return std::make_unique<torch::optim::AdamW>(params, torch::optim::AdamWOptions(c.lr).betas(betas).eps(c.eps).weight_decay(c.weight_decay));
    case OptimizerType::kSGD:
      return std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(c.lr).momentum(c.momentum).nesterov(c.nesterov).weight_decay(c.weight_decay));
    case OptimizerType::kAdagrad:
      return std::make_unique<torch::optim::Adagrad>(params, torch::optim::AdagradOptions(c.lr).lr_decay(c.lr_decay).weight_decay(c.weight_decay).eps(c.eps));
    case OptimizerType::kLion:  // LibTorch has no Lion: strata's ATen one (its Python twin is tested against a plain one)
      return std::make_unique<engine::Lion>(params, engine::LionOptions(c.lr).betas(betas).weight_decay(c.weight_decay));
    case OptimizerType::kLamb:  // nor Lamb (its Python twin is tested against a plain one)
      return std::make_unique<engine::Lamb>(params, engine::LambOptions(c.lr)
                                                        .betas(betas)
                                                        .eps(c.eps)
                                                        .weight_decay(c.weight_decay)
                                                        .max_coeff(c.max_coeff)
                                                        .min_coeff(c.min_coeff)
                                                        .bias_correction(c.bias_correction));
  }
  return nullptr;
}

inline std::vector<at::Tensor> trainable(ToyModel& m) {
  std::vector<at::Tensor> out;
  for (auto& p : m.parameters())
    if (p.requires_grad()) out.push_back(p);
  return out;
}

inline engine::EngineOptions sharded_options(int stage, const OptimizerConfig& oc) {
  engine::EngineOptions o;
  o.stage = stage;
  o.optimizer = oc;
  o.reduce_bucket_size = 1500;  // several chunks per bucket and several buckets
  o.chunks.chunk_size_elems = 512;
  o.chunks.io_align_bytes = 64;
  o.optimizer_threads = 2;
  return o;
}

// The reference: one process, the whole job's batch, plain torch::optim.
struct Reference {
  ToyModel model{7};
  std::unique_ptr<torch::optim::Optimizer> opt;
  // strata.gradient_shard_dtype bf16: each gradient rounded to bf16 (to nearest even)
  // before clipping and the step, which is what the engine's bf16 shards hold.
  bool bf16_grads = false;
  // With ranks > 1 the step's gradient is each rank's slice's mean-loss gradient,
  // computed apart and averaged, as data parallelism makes it; 1 takes the whole batch's
  // at once. The two differ by fp32 rounding, which most comparisons allow for; bf16
  // optimizer state magnifies it (Note [bf16 state flips]). For two ranks this gradient
  // is the engine's bit for bit: a sum of two terms rounds once whatever the order, and
  // halving is exact.
  int ranks = 1;
  explicit Reference(const OptimizerConfig& c, c10::Device device = c10::kCPU) {
    model.to(device);
    opt = torch_optimizer(c, trainable(model));
  }
  double step(std::int64_t step, std::int64_t rows, double clip = 0, double norm_type = 2, double* norm = nullptr) {
    auto [x, y] = toy_batch(step, rows);
    x = x.to(model.w1.device());
    y = y.to(model.w1.device());
    torch_compat::zero_grad_keep(*opt);
    at::Tensor loss;
    if (ranks == 1) {
      loss = model.loss(x, y);
      loss.backward();
    } else {
      const std::int64_t per = rows / ranks;
      loss = at::zeros({}, x.options().dtype(at::kFloat));
      for (int r = 0; r < ranks; ++r) {
        at::Tensor l = model.loss(x.narrow(0, r * per, per), y.narrow(0, r * per, per));
        l.backward();  // into the gradients: the sum over the ranks so far
        loss = loss + l.detach();
      }
      for (auto& p : trainable(model))
        if (p.grad().defined()) p.grad().div_(ranks);
      loss = loss / ranks;
    }
    if (bf16_grads)
      for (auto& p : trainable(model))
        if (p.grad().defined()) p.grad().copy_(p.grad().to(at::kBFloat16));
    if (clip > 0) {
      const double n = torch::nn::utils::clip_grad_norm_(trainable(model), clip, norm_type);
      if (norm) *norm = n;
    }
    opt->step();
    return loss.item<double>();
  }
};

// max over parameters of rel_error
inline double max_error(ToyModel& got, ToyModel& want) {
  double worst = 0;
  auto b = want.named_parameters();
  for (const auto& item : got.named_parameters()) worst = std::max(worst, rel_error(item.value(), b[item.key()]));
  return worst;
}

// Note [bf16 state flips]: every parameter as one vector, relative L2 (rel_l2_error).
inline double whole_model_error(ToyModel& got, ToyModel& want) {
  auto flat = [](ToyModel& m) {
    std::vector<at::Tensor> v;
    for (const auto& p : m.parameters()) v.push_back(p.detach().reshape({-1}));
    return at::cat(v);
  };
  return rel_l2_error(flat(got), flat(want));
}

inline void compare(ToyModel& got, ToyModel& want, double tol, const std::string& when, bool skip_unused = false) {
  auto a = got.named_parameters(), b = want.named_parameters();
  for (const auto& item : a) {
    if (skip_unused && item.key() == "unused") continue;
    const double e = rel_error(item.value(), b[item.key()]);
    if (e > tol) fail(fmt::format("{}: parameter {} differs, relative error {:.3g} > {:.0g}", when, item.key(), e, tol));
  }
}

inline std::pair<at::Tensor, at::Tensor> my_rows(std::int64_t step, std::int64_t per_rank) {
  auto [x, y] = toy_batch(step, per_rank * world_comm().world());
  return {x.narrow(0, world_comm().rank() * per_rank, per_rank), y.narrow(0, world_comm().rank() * per_rank, per_rank)};
}

// A MODE ending in "tensor-ops": ATen ops step the state and take the gradient
// statistics, wherever the state is (host_step; what state on a GPU always takes).
// The suffix is taken off MODE.
inline void take_tensor_ops(std::string& mode, engine::EngineOptions& opts) {
  if (!strata::testing::take_suffix(mode, "tensor-ops")) return;
  opts.host_step = engine::EngineOptions::StepKernels::kTensorOps;
  if (mode.ends_with('-')) mode.pop_back();
}

// The optimizer state (and, by default, the gradient shards) on nvme files.
inline void use_nvme(engine::EngineOptions& opts, const std::string& job) {
  opts.optim_device = OffloadDevice::kNvme;
  opts.swap.nvme_path = std::getenv("STRATA_TEST_NVME");
  opts.swap.job_name = job;
  opts.swap.min_io_bytes = 0;  // every record on disk, however small
}

// Note [optimizer sub-groups]: a chunk whose shard is 2 sub-groups of 1024 elements and
// a partial one at world 1 (the toy model is 1,320 elements), parameters crossing the
// boundaries, with read ahead as deep as 5 spare buffers allow.
inline void use_sub_groups(engine::EngineOptions& opts) {
  opts.chunks.chunk_size_elems = 4096;
  opts.optim_pipeline.sub_group_elems = 1024;
  opts.optim_pipeline.buffer_count = 8;
}

// The checkpoint modes (zero_worker_ckpt.cpp).
void save(const std::string& dir, int steps, const std::string& mode);
void resume(const std::string& dir, int steps, std::string mode);
void groups(int stage, const std::string& optim, std::string mode);  // zero_worker_groups.cpp

}  // namespace strata::testing::zero
