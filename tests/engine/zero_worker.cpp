// One rank of the ZeRO-1/2 tests (tests/engine/zero_test.cpp starts N of these). Each
// rank also trains the reference — the same model, unsharded, with plain torch::optim on
// the whole job's batch — and compares. Prints "OK" and exits 0 on success, 1 on a
// mismatch, 3 on an expected failure.
//
// zero_worker parity STAGE OPTIM MODE     20 steps vs torch::optim (fp32, <= 1e-6); MODE:
//                                         wrap (the optimizer wrapped), cpu or nvme (its
//                                         state there), nvme-hostgrads, nvme-noread,
//                                         nvme-nowrite, nvme-serial, nvme-subgroups,
//                                         nvme-host-split (optimizer_max_in_cpu)
//                                         (see zero_test.cpp), each with an optional
//                                         "bf16-state-" prefix; a "tensor-ops" suffix
//                                         steps with ATen ops (host_step); on
//                                         STRATA_TEST_DEVICE (gpu_test.cpp)
// zero_worker shared STAGE                 a module registered twice, through every entry point
// zero_worker badparam                     a bad parameter is named by its index
// zero_worker stages OPTIM                 stage 1 and stage 2 side by side
// zero_worker accum STAGE [nvme]           4 micro-steps == one 4x batch
// zero_worker fault eio|corrupt           an nvme read fails on the last rank mid-run:
//                                         every rank stops with an error, none hangs
// zero_worker clip STAGE NORM [MODE]       clip_grad_norm(1|2|inf) vs clip_grad_norm_; MODE
//                                         nvme, nvme-subgroups, tensor-ops, nvme-tensor-ops
// zero_worker fp16 STAGE [MODE]            loss scaler skips exactly the overflowing steps;
//                                         MODE nvme, tensor-ops
// zero_worker bf16 STAGE                   bf16 compute copies == RNE(master), loss tracks
// zero_worker save DIR STEPS [bf16-state] | resume DIR STEPS [MODE]   consolidated state
//                                         dict across world sizes; MODE nvme, bf16-state,
//                                         bf16-state-nvme
// zero_worker kill STAGE                   the last rank dies mid-run; others must error
#include <signal.h>

#include <cerrno>
#include <cmath>
#include <optional>
#include <set>
#include <string>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>
#include <torch/serialize.h>

#include "strata/comm/torch_compat.h"
#include "strata/comm/rendezvous.h"
#include "strata/engine/engine.h"
#include "strata/engine/module_hooks.h"
#include "strata/io/fault_injection.h"
#include "support/worker.h"
#include "toy_model.h"

using namespace strata;
using strata::testing::rel_error;
using strata::testing::toy_batch;
using strata::testing::ToyModel;

namespace {

constexpr std::int64_t kRowsPerRank = 6;
// bf16 state against the reference rounded alike: both round fp32 values that can
// differ by an fp32 rounding (sharded gradients are summed in another order), so an
// element's m or v can land one bf16 step (2^-8) apart now and then, and its parameter
// about lr * 2^-8 apart. Measured: 1e-7 at world sizes 1 and 2 (no such flip); 1.25e-4
// after one flip. bf16 state is 2.4e-3 (Adam) and 1.5e-3 (AdamW) away from fp32 state
// after 20 steps; SGD's momentum much less, so the bf16-state cases use Adam or AdamW.
constexpr double kBf16StateTol = 2e-4;
comm::Communicator* g_comm = nullptr;
using strata::testing::check;
using strata::testing::fail;
using strata::testing::test_device;


OptimizerConfig optim_config(const std::string& name) {
  OptimizerConfig c;
  c.lr = 1e-2;
  if (name == "adam") c.type = OptimizerType::kAdam, c.adam_w_mode = false, c.weight_decay = 0.01;
  else if (name == "adamw") c.type = OptimizerType::kAdamW, c.weight_decay = 0.05;
  else if (name == "sgd") c.type = OptimizerType::kSGD, c.momentum = 0.9, c.nesterov = true, c.weight_decay = 0.01;
  else if (name == "adagrad") c.type = OptimizerType::kAdagrad, c.lr_decay = 0.01, c.weight_decay = 0.01, c.eps = 1e-10;
  else fail("unknown optimizer " + name);
  return c;
}

std::unique_ptr<torch::optim::Optimizer> torch_optimizer(const OptimizerConfig& c, std::vector<at::Tensor> params) {
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
  }
  return nullptr;
}

std::vector<at::Tensor> trainable(ToyModel& m) {
  std::vector<at::Tensor> out;
  for (auto& p : m.parameters())
    if (p.requires_grad()) out.push_back(p);
  return out;
}

engine::EngineOptions sharded_options(int stage, const OptimizerConfig& oc) {
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
  explicit Reference(const OptimizerConfig& c, c10::Device device = c10::kCPU) {
    model.to(device);
    opt = torch_optimizer(c, trainable(model));
  }
  double step(std::int64_t step, std::int64_t rows, double clip = 0, double norm_type = 2, double* norm = nullptr) {
    auto [x, y] = toy_batch(step, rows);
    x = x.to(model.w1.device());
    y = y.to(model.w1.device());
    torch_compat::zero_grad_keep(*opt);
    at::Tensor loss = model.loss(x, y);
    loss.backward();
    if (clip > 0) {
      const double n = torch::nn::utils::clip_grad_norm_(trainable(model), clip, norm_type);
      if (norm) *norm = n;
    }
    opt->step();
    return loss.item<double>();
  }
};

// What bf16 optimizer state holds: each state tensor of the reference rounded to bf16
// (to nearest even) after its step, the arithmetic in fp32 as before.
void round_state_to_bf16(torch::optim::Optimizer& opt) {
  auto round = [](const at::Tensor& t) {
    if (t.defined()) t.copy_(t.to(at::kBFloat16));
  };
  for (auto& [key, ps] : opt.state()) {
    if (auto* a = dynamic_cast<torch::optim::AdamParamState*>(ps.get())) round(a->exp_avg()), round(a->exp_avg_sq());
    else if (auto* w = dynamic_cast<torch::optim::AdamWParamState*>(ps.get())) round(w->exp_avg()), round(w->exp_avg_sq());
    else if (auto* g = dynamic_cast<torch::optim::SGDParamState*>(ps.get())) round(g->momentum_buffer());
    else if (auto* d = dynamic_cast<torch::optim::AdagradParamState*>(ps.get())) round(d->sum());
  }
}

// max over parameters of rel_error
double max_error(ToyModel& got, ToyModel& want) {
  double worst = 0;
  auto b = want.named_parameters();
  for (const auto& item : got.named_parameters()) worst = std::max(worst, rel_error(item.value(), b[item.key()]));
  return worst;
}

void compare(ToyModel& got, ToyModel& want, double tol, const std::string& when, bool skip_unused = false) {
  auto a = got.named_parameters(), b = want.named_parameters();
  for (const auto& item : a) {
    if (skip_unused && item.key() == "unused") continue;
    const double e = rel_error(item.value(), b[item.key()]);
    if (e > tol) fail(fmt::format("{}: parameter {} differs, relative error {:.3g} > {:.0g}", when, item.key(), e, tol));
  }
}

std::pair<at::Tensor, at::Tensor> my_rows(std::int64_t step, std::int64_t per_rank) {
  auto [x, y] = toy_batch(step, per_rank * g_comm->world());
  return {x.narrow(0, g_comm->rank() * per_rank, per_rank), y.narrow(0, g_comm->rank() * per_rank, per_rank)};
}

// A MODE ending in "tensor-ops": ATen ops step the state and take the gradient
// statistics, wherever the state is (host_step; what state on a GPU always takes).
// The suffix is taken off MODE.
void take_tensor_ops(std::string& mode, engine::EngineOptions& opts) {
  if (!mode.ends_with("tensor-ops")) return;
  opts.host_step = engine::EngineOptions::StepKernels::kTensorOps;
  mode.resize(mode.size() - std::string_view("tensor-ops").size());
  if (mode.ends_with('-')) mode.pop_back();
}

// The optimizer state (and, by default, the gradient shards) on nvme files.
void use_nvme(engine::EngineOptions& opts, const std::string& job) {
  opts.optim_device = OffloadDevice::kNvme;
  opts.swap.nvme_path = std::getenv("STRATA_TEST_NVME");
  opts.swap.job_name = job;
  opts.swap.min_io_bytes = 0;  // every record on disk, however small
}

// Note [optimizer sub-groups]: a chunk whose shard is 2 sub-groups of 1024 elements and
// a partial one at world 1 (the toy model is 1,320 elements), parameters crossing the
// boundaries, with read ahead as deep as 5 spare buffers allow.
void use_sub_groups(engine::EngineOptions& opts) {
  opts.chunks.chunk_size_elems = 4096;
  opts.optim_pipeline.sub_group_elems = 1024;
  opts.optim_pipeline.buffer_count = 8;
}

void parity(int stage, const std::string& optim, std::string mode) {
  const bool wrap = mode == "wrap";
  OptimizerConfig oc = optim_config(optim);
  // The model, its reference and the batches on STRATA_TEST_DEVICE (the gpu tests).
  Reference ref(oc, test_device());
  ToyModel model(7);
  model.to(test_device());
  auto opts = sharded_options(stage, oc);
  take_tensor_ops(mode, opts);
  // "bf16-state": m and v in bf16, against the reference with its state rounded alike
  // and, to show the comparison can tell, against the reference without the rounding.
  const bool bf16_state = mode.starts_with("bf16-state");
  std::optional<Reference> fp32_ref;
  if (bf16_state) {
    opts.optim_state_dtype = at::kBFloat16;
    mode = mode.substr(std::min(mode.size(), std::string_view("bf16-state-").size()));
    fp32_ref.emplace(oc, test_device());
  }
  if (wrap) opts.wrap = [oc](std::vector<at::Tensor> shards) { return torch_optimizer(oc, std::move(shards)); };
  if (mode == "cpu") opts.optim_device = OffloadDevice::kCpu;
  if (mode.starts_with("nvme")) use_nvme(opts, fmt::format("parity-{}-{}", stage, optim));
  if (mode == "nvme-subgroups") use_sub_groups(opts);
  if (mode == "nvme-hostgrads") opts.nvme_gradients = false;
  // strata.optimizer_max_in_cpu: the first chunks' state (512-element chunks) on host,
  // the rest on nvme.
  if (mode == "nvme-host-split") opts.optim_max_in_cpu = 600;
  // The pipeline switched off in part or whole, with exactly the buffers it needs.
  if (mode == "nvme-noread" || mode == "nvme-nowrite" || mode == "nvme-serial") {
    opts.optim_pipeline.read_ahead = mode == "nvme-nowrite";
    opts.optim_pipeline.write_behind = mode == "nvme-noread";
    opts.optim_pipeline.buffer_count = opts.optim_pipeline.needed();
  }
  auto opt = check(engine::Engine::create(trainable(model), *g_comm, opts), "create");
  if (bf16_state && !mode.starts_with("nvme") && oc.effective_type() != OptimizerType::kSGD) {
    // Adam's master, m and v: 4 + 2 + 2 bytes an element against 4 + 4 + 4.
    ToyModel other(7);
    other.to(test_device());
    engine::EngineOptions fp32_opts = opts;
    fp32_opts.optim_state_dtype = at::kFloat;
    auto fp32_eng = check(engine::Engine::create(trainable(other), *g_comm, fp32_opts), "create fp32");
    const auto kind = plan::kind_index(plan::StateKind::kOptimizer);
    for (std::size_t t = 0; t < 3; ++t) {
      const std::uint64_t got = opt->memory_by_kind()[t][kind], fp32 = fp32_eng->memory_by_kind()[t][kind];
      if (got * 3 != fp32 * 2) fail(fmt::format("tier {}: bf16 state holds {} bytes, fp32 state {}", t, got, fp32));
    }
  }
  if (mode == "nvme-host-split") {
    const auto by_kind = opt->memory_by_kind();
    const auto kind = plan::kind_index(plan::StateKind::kOptimizer);
    if (by_kind[plan::tier_index(plan::Tier::kHost)][kind] == 0 || by_kind[plan::tier_index(plan::Tier::kNvme)][kind] == 0)
      fail("optimizer_max_in_cpu: expected optimizer state both on host and on nvme");
  }
  const at::Tensor unused_before = model.unused.detach().clone();
  for (int s = 0; s < 20; ++s) {
    auto [x, y] = my_rows(s, kRowsPerRank);
    check(opt->backward(model.loss(x.to(test_device()), y.to(test_device()))), "backward");
    auto r = check(opt->step(), "step");
    if (!r.applied) fail("step not applied");
    ref.step(s, kRowsPerRank * g_comm->world());
    if (bf16_state) {
      round_state_to_bf16(*ref.opt);
      fp32_ref->step(s, kRowsPerRank * g_comm->world());
    }
    // A wrapped torch::optim optimizer steps whole chunk shards, so a parameter that
    // never had a gradient is stepped with a zero one (documented); the fused path
    // skips it exactly as torch::optim does.
    compare(model, ref.model, bf16_state ? kBf16StateTol : 1e-6, fmt::format("stage {} {} step {}", stage, optim, s),
            /*skip_unused=*/wrap);
  }
  if (bf16_state) {
    const double rounded = max_error(model, ref.model), plain = max_error(model, fp32_ref->model);
    fmt::print("bf16 state: relative error {:.3g} against the rounded reference, {:.3g} against fp32 state\n",
               rounded, plain);
    if (plain < 5 * kBf16StateTol) fail("bf16 state is too close to fp32 state for the comparison to tell them apart");
  }
  if (!wrap && !at::equal(model.unused, unused_before)) fail("a parameter that never had a gradient changed");
}

void stages(const std::string& optim) {
  OptimizerConfig oc = optim_config(optim);
  ToyModel m1(7), m2(7);
  auto o1 = check(engine::Engine::create(trainable(m1), *g_comm, sharded_options(1, oc)), "create 1");
  auto o2 = check(engine::Engine::create(trainable(m2), *g_comm, sharded_options(2, oc)), "create 2");
  for (int s = 0; s < 20; ++s) {
    auto [x, y] = my_rows(s, kRowsPerRank);
    check(o1->backward(m1.loss(x, y)), "backward 1");
    check(o1->step(), "step 1");
    check(o2->backward(m2.loss(x, y)), "backward 2");
    check(o2->step(), "step 2");
    compare(m1, m2, 1e-6, fmt::format("stage 1 vs 2, step {}", s));
  }
}

void accum(int stage, const std::string& nvme) {
  OptimizerConfig oc = optim_config("adamw");
  Reference ref(oc);
  ToyModel model(7);
  auto opts = sharded_options(stage, oc);
  opts.gradient_accumulation_steps = 4;
  if (!nvme.empty()) use_nvme(opts, "accum");
  if (nvme == "nvme-subgroups") use_sub_groups(opts);
  auto opt = check(engine::Engine::create(trainable(model), *g_comm, opts), "create");
  const std::int64_t per_rank = 4 * kRowsPerRank;
  for (int s = 0; s < 10; ++s) {
    auto [x, y] = my_rows(s, per_rank);
    for (int m = 0; m < 4; ++m) {
      const std::uint64_t seq_before = g_comm->sequence();
      check(opt->backward(model.loss(x.narrow(0, m * kRowsPerRank, kRowsPerRank), y.narrow(0, m * kRowsPerRank, kRowsPerRank))), "backward");
      auto r = check(opt->step(), "step");
      if (r.boundary != (m == 3)) fail("boundary flag wrong");
      // Stage 1 all-reduces once per optimizer step; stage 2 reduce-scatters every
      // micro-step, so that no full-size gradient outlives its backward.
      const bool communicated = g_comm->sequence() != seq_before;
      if (stage < 2 && m < 3 && communicated) fail("stage 1: communication before the accumulation boundary");
      if (stage == 2 && g_comm->world() > 1 && !communicated) fail("stage 2: a micro-step's gradients were not reduced");
    }
    ref.step(s, per_rank * g_comm->world());
    compare(model, ref.model, 1e-6, fmt::format("accumulation step {}", s));
  }
}

void clip(int stage, double norm_type, std::string nvme) {
  OptimizerConfig oc = optim_config("sgd");
  Reference ref(oc);
  ToyModel model(7);
  auto opts = sharded_options(stage, oc);
  take_tensor_ops(nvme, opts);
  if (!nvme.empty()) use_nvme(opts, "clip");
  if (nvme == "nvme-subgroups") use_sub_groups(opts);
  auto opt = check(engine::Engine::create(trainable(model), *g_comm, opts), "create");
  for (int s = 0; s < 10; ++s) {
    auto [x, y] = my_rows(s, kRowsPerRank);
    check(opt->backward(model.loss(x, y)), "backward");
    const double norm = check(opt->clip_grad_norm(0.05, norm_type), "clip_grad_norm");
    check(opt->step(), "step");
    double want = 0;
    ref.step(s, kRowsPerRank * g_comm->world(), 0.05, norm_type, &want);
    if (std::abs(norm - want) > 1e-6 * want) fail(fmt::format("norm {} vs torch {}", norm, want));
    compare(model, ref.model, 1e-6, fmt::format("clip norm {} step {}", norm_type, s));
  }
}

// "nvme": the state on nvme, so the skipped steps leave their early reads (Note [early
// state reads]) for the next step, which must read the new gradients with them.
void fp16(int stage, std::string mode) {
  OptimizerConfig oc = optim_config("adam");
  Reference ref(oc);
  ToyModel model(7);
  auto opts = sharded_options(stage, oc);
  take_tensor_ops(mode, opts);
  if (mode == "nvme") use_nvme(opts, "fp16");
  opts.fp16 = {.enabled = true, .initial_scale_power = 8, .loss_scale_window = 3, .hysteresis = 2, .min_loss_scale = 1};
  auto opt = check(engine::Engine::create(trainable(model), *g_comm, opts), "create");
  // Overflow only on rank 0: every rank must still skip. Expected scales by hand from
  // DeepSpeed's rules (start 256, window 3, hysteresis 2):
  const std::set<int> overflow = {2, 3, 4, 9};
  const double want_scale[] = {256, 256, 256, 256, 128, 64, 64, 64, 128, 128, 128, 128};
  for (int s = 0; s < 12; ++s) {
    auto [x, y] = my_rows(s, kRowsPerRank);
    at::Tensor loss = model.loss(x, y);
    if (overflow.count(s) && g_comm->rank() == 0) loss = loss * std::numeric_limits<float>::infinity();
    check(opt->backward(loss), "backward");
    auto r = check(opt->step(), "step");
    if (r.loss_scale != want_scale[s]) fail(fmt::format("step {}: loss scale {} != {}", s, r.loss_scale, want_scale[s]));
    if (r.applied == (overflow.count(s) > 0)) fail(fmt::format("step {}: applied={} but overflow={}", s, r.applied, overflow.count(s)));
    if (!overflow.count(s)) ref.step(s, kRowsPerRank * g_comm->world());
    compare(model, ref.model, 1e-6, fmt::format("fp16 scaler step {}", s));
  }
  if (opt->loss_scaler().skipped_steps() != overflow.size()) fail("skipped step count");
}

void bf16(int stage) {
  OptimizerConfig oc = optim_config("adamw");
  Reference ref(oc);
  ToyModel model(7);
  auto opts = sharded_options(stage, oc);
  opts.compute_dtype = at::kBFloat16;
  auto opt = check(engine::Engine::create(trainable(model), *g_comm, opts), "create");
  for (int s = 0; s < 20; ++s) {
    auto [x, y] = my_rows(s, kRowsPerRank);
    // bf16 compute, fp32 loss (CPU has no bf16 mse_loss in torch 1.13).
    at::Tensor loss = at::mse_loss(model.forward(x.to(at::kBFloat16)).to(at::kFloat), y);
    check(opt->backward(loss), "backward");
    check(opt->step(), "step");
    // Compare against the rank-sum of losses: the reference's loss is the job's mean.
    at::Tensor l = loss.detach().clone();
    check(g_comm->all_reduce(l, comm::ReduceOp::kAvg).wait(), "loss avg");
    const double want = ref.step(s, kRowsPerRank * g_comm->world());
    if (std::abs(l.item<double>() - want) > 0.02 * want) fail(fmt::format("bf16 loss {} vs fp32 {}", l.item<double>(), want));
  }
  auto full = check(opt->consolidate_state_dict(0), "consolidate");
  if (g_comm->rank() == 0) {
    auto masters = full->param_groups()[0].params();
    auto params = trainable(model);
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (params[i].scalar_type() != at::kBFloat16) fail("parameters are not bf16");
      if (!at::equal(params[i], masters[i].to(at::kBFloat16))) fail(fmt::format("param {} != RNE(master)", i));
    }
  }
}

// MODE "bf16-state": the optimizer state in bf16 (the state dict holds it widened).
void save(const std::string& dir, int steps, const std::string& mode) {
  OptimizerConfig oc = optim_config("adam");
  ToyModel model(7);
  auto opts = sharded_options(2, oc);
  if (mode == "bf16-state") opts.optim_state_dtype = at::kBFloat16;
  auto opt = check(engine::Engine::create(trainable(model), *g_comm, opts), "create");
  for (int s = 0; s < steps; ++s) {
    auto [x, y] = my_rows(s, kRowsPerRank * 4 / g_comm->world());  // 24 rows per step at any world size
    check(opt->backward(model.loss(x, y)), "backward");
    check(opt->step(), "step");
  }
  auto full = check(opt->consolidate_state_dict(0), "consolidate");
  if (g_comm->rank() == 0 && mode == "bf16-state") {  // fp32 tensors of bf16 values, exactly
    for (auto& [key, ps] : full->state()) {
      auto& a = dynamic_cast<torch::optim::AdamParamState&>(*ps);
      for (const at::Tensor& t : {a.exp_avg(), a.exp_avg_sq()})
        if (t.scalar_type() != at::kFloat || !at::equal(t, t.to(at::kBFloat16).to(at::kFloat)))
          fail("the saved bf16 state is not its bf16 values in fp32");
    }
  }
  if (g_comm->rank() == 0) {
    torch::save(*full, dir + "/optim.pt");
    torch::save(full->param_groups()[0].params(), dir + "/params.pt");
  }
}

// "nvme": the state on nvme, and the first resumed step's backward runs before the
// state is loaded (the model already holds the saved weights), so the reads it started
// early (Note [early state reads]) hold the fresh engine's zero state: loading must
// drop them, or the step would use m = v = 0.
// "bf16-state[-nvme]": saved and resumed with bf16 state at the same world size, against
// the same engine run uninterrupted, bit for bit: loading the widened values must give
// back the very bf16 state.
void resume(const std::string& dir, int steps, std::string mode) {
  OptimizerConfig oc = optim_config("adam");
  ToyModel model(7);
  std::vector<at::Tensor> params;
  torch::load(params, dir + "/params.pt");
  const bool bf16_state = mode.starts_with("bf16-state");
  if (bf16_state) mode = mode.substr(std::min(mode.size(), std::string_view("bf16-state-").size()));
  const bool nvme = mode == "nvme";
  if (nvme) {
    at::NoGradGuard no_grad;
    auto mine = trainable(model);
    for (std::size_t i = 0; i < mine.size(); ++i) mine[i].copy_(params[i]);
  }
  auto opts = sharded_options(2, oc);
  if (nvme) use_nvme(opts, "resume");
  if (bf16_state) opts.optim_state_dtype = at::kBFloat16;
  auto opt = check(engine::Engine::create(trainable(model), *g_comm, opts), "create");
  torch::optim::Adam loaded(params, torch::optim::AdamOptions(oc.lr));
  torch::load(loaded, dir + "/optim.pt");
  if (!nvme) check(opt->load_state_dict(loaded), "load_state_dict");
  // The reference runs all steps uninterrupted in one process (bf16 state: the same
  // engine, uninterrupted, on this rank's rows).
  Reference ref(oc);
  ToyModel uninterrupted(7);
  std::unique_ptr<engine::Engine> cont;
  if (bf16_state) {
    engine::EngineOptions cont_opts = sharded_options(2, oc);
    cont_opts.optim_state_dtype = at::kBFloat16;
    cont = check(engine::Engine::create(trainable(uninterrupted), *g_comm, cont_opts), "create uninterrupted");
  }
  for (int s = 0; s < 2 * steps; ++s) {
    auto [x, y] = my_rows(s, kRowsPerRank * 4 / g_comm->world());
    if (s >= steps) {
      check(opt->backward(model.loss(x, y)), "backward");
      if (nvme && s == steps) check(opt->load_state_dict(loaded), "load_state_dict");
      check(opt->step(), "step");
    }
    if (!bf16_state) {
      ref.step(s, kRowsPerRank * 4);
      if (s >= steps) compare(model, ref.model, 1e-6, fmt::format("resumed step {}", s));
      continue;
    }
    check(cont->backward(uninterrupted.loss(x, y)), "backward uninterrupted");
    check(cont->step(), "step uninterrupted");
    if (s >= steps) compare(model, uninterrupted, 0.0, fmt::format("resumed step {} (bf16 state)", s));
  }
}

void kill(int stage) {
  ToyModel model(7);
  auto opt = check(engine::Engine::create(trainable(model), *g_comm, sharded_options(stage, optim_config("adam"))), "create");
  for (int s = 0; s < 100; ++s) {
    if (s == 5 && g_comm->rank() == g_comm->world() - 1) ::raise(SIGKILL);
    auto [x, y] = my_rows(s, kRowsPerRank);
    auto st = opt->backward(model.loss(x, y));
    auto r = st ? opt->step() : Result<engine::StepResult>(std::unexpected(st.error()));
    if (!r) {
      fmt::print(stderr, "EXPECTED FAILURE at step {}: {}\n", s, r.error());
      std::fflush(stderr);
      std::_Exit(3);
    }
  }
  fail("no failure seen");
}

// A module registered twice (LibTorch lists its parameters twice in parameters()) and
// called twice: every entry point takes the duplicate as the same parameter.
struct Shared : torch::nn::Module {
  torch::nn::Linear in{nullptr}, twice{nullptr}, again{nullptr};
  Shared() {
    in = register_module("in", torch::nn::Linear(23, 16));
    twice = register_module("twice", torch::nn::Linear(16, 16));
    again = register_module("again", twice);  // the same module under a second name
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = at::tanh(strata::engine::forward(in, x));
    h = at::tanh(strata::engine::forward(twice, h));
    return strata::engine::forward(again, h).narrow(1, 0, 11);
  }
};

void shared(int stage) {
  OptimizerConfig oc = optim_config("adamw");
  at::manual_seed(4);
  auto model = std::make_shared<Shared>();
  at::manual_seed(4);
  auto ref = std::make_shared<Shared>();
  if (model->parameters().size() != 6) fail("LibTorch no longer lists a twice-registered module twice");
  auto opts = sharded_options(stage, oc);
  auto eng = stage == 3 ? check(engine::shard(*model, *g_comm, opts), "shard")
                        : check(engine::Engine::create(model->parameters(), *g_comm, opts), "create");
  if (eng->params().size() != 4) fail(fmt::format("{} parameters, expected 4 distinct ones", eng->params().size()));
  std::vector<at::Tensor> distinct;  // torch::optim would step a listed-twice parameter twice
  for (const auto& p : ref->parameters())
    if (std::find_if(distinct.begin(), distinct.end(), [&](const at::Tensor& d) { return d.is_same(p); }) == distinct.end())
      distinct.push_back(p);
  auto ref_opt = torch_optimizer(oc, distinct);
  for (int s = 0; s < 10; ++s) {
    auto [x, y] = toy_batch(s, kRowsPerRank * g_comm->world());
    check(eng->backward(at::mse_loss(model->forward(x.narrow(0, g_comm->rank() * kRowsPerRank, kRowsPerRank)),
                                     y.narrow(0, g_comm->rank() * kRowsPerRank, kRowsPerRank))),
          "backward");
    check(eng->step(), "step");
    torch_compat::zero_grad_keep(*ref_opt);
    at::mse_loss(ref->forward(x), y).backward();
    ref_opt->step();
  }
  auto got = check(eng->consolidated_params(), "consolidated");
  const std::vector<at::Tensor> mine = model->parameters(), theirs = ref->parameters();
  for (std::size_t i = 0; i < got.size(); ++i) {
    auto it = std::find_if(mine.begin(), mine.end(), [&](const at::Tensor& p) { return p.is_same(eng->params()[i]); });
    const std::size_t k = static_cast<std::size_t>(it - mine.begin());
    if (rel_error(got[i], theirs.at(k)) > 1e-6) fail(fmt::format("stage {}: parameter {} differs", stage, i));
  }
}

// A parameter the engine cannot take is named by its index in the caller's list.
void badparam() {
  ToyModel model(7);
  std::vector<at::Tensor> params = model.parameters();
  params[2] = at::randn({11, 37}).t();  // not contiguous
  for (int stage : {1, 3}) {
    auto eng = engine::Engine::create(params, *g_comm, sharded_options(stage, optim_config("sgd")));
    if (eng) fail("a non-contiguous parameter was accepted");
    const std::string msg = eng.error().message();
    if (eng.error().code() != ErrorCode::kInvalidArgument || msg.find("parameter 2 of unit 'model'") == std::string::npos)
      fail("stage " + std::to_string(stage) + ": " + eng.error().to_string());
  }
}

// Stage 2, Adam, optimizer state and gradients on nvme. In step 3 the last rank's first
// nvme read fails (EIO) or comes back with a flipped byte. Every rank must stop with an
// error (exit 3): the last rank's names the record and its file; the others fail at
// their next collective, since the last rank is gone. None may hang or train on.
void fault(const std::string& kind) {
  OptimizerConfig oc = optim_config("adamw");
  ToyModel model(7);
  auto opts = sharded_options(2, oc);
  use_nvme(opts, "fault");
  auto injector = std::make_shared<io::FaultInjector>();
  opts.swap.faults = injector;
  auto opt = check(engine::Engine::create(trainable(model), *g_comm, opts), "create");
  const bool victim = g_comm->rank() == g_comm->world() - 1;
  for (int s = 0; s < 8; ++s) {
    auto [x, y] = my_rows(s, kRowsPerRank);
    if (auto st = opt->backward(model.loss(x, y)); !st) strata::testing::expected_failure(st.error());
    if (s == 3 && victim) {
      if (kind == "eio") injector->fail_next(EIO, 1, io::FaultTarget::kRead);
      else injector->corrupt_next_read(100);
    }
    if (auto r = opt->step(); !r) strata::testing::expected_failure(r.error());
  }
  fail("the injected fault was never reported");
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> a(argv + 1, argv + argc);
  if (a.empty()) fail("usage: zero_worker MODE ...");
  comm::CommOptions co;
  co.timeout = std::chrono::milliseconds(a[0] == "kill" ? 5000 : 60000);
  auto comm = check(comm::init_from_env(co), "init");
  g_comm = comm.get();
  strata::testing::worker_comm() = g_comm;
  const std::string& mode = a[0];
  if (mode == "parity") parity(std::stoi(a.at(1)), a.at(2), a.size() > 3 ? a[3] : "");
  else if (mode == "shared") shared(std::stoi(a.at(1)));
  else if (mode == "badparam") badparam();
  else if (mode == "stages") stages(a.at(1));
  else if (mode == "fault") fault(a.at(1));
  else if (mode == "accum") accum(std::stoi(a.at(1)), a.size() > 2 ? a[2] : "");
  else if (mode == "clip") clip(std::stoi(a.at(1)), a.at(2) == "inf" ? INFINITY : std::stod(a.at(2)), a.size() > 3 ? a[3] : "");
  else if (mode == "fp16") fp16(std::stoi(a.at(1)), a.size() > 2 ? a[2] : "");
  else if (mode == "bf16") bf16(std::stoi(a.at(1)));
  else if (mode == "save") save(a.at(1), std::stoi(a.at(2)), a.size() > 3 ? a[3] : "");
  else if (mode == "resume") resume(a.at(1), std::stoi(a.at(2)), a.size() > 3 ? a[3] : "");
  else if (mode == "kill") kill(std::stoi(a.at(1)));
  else fail("unknown mode " + mode);
  fmt::print("OK\n");
  return 0;
}
