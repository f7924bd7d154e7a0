// One rank of the ZeRO-1/2 tests (tests/engine/zero_test.cpp starts N of these). Each
// rank also trains the reference — the same model, unsharded, with plain torch::optim on
// the whole job's batch — and compares. Prints "OK" and exits 0 on success, 1 on a
// mismatch, 3 on an expected failure. The reference and the option builders are in
// zero_worker.h; the checkpoint modes (save, resume) in zero_worker_ckpt.cpp.
//
// zero_worker parity STAGE OPTIM MODE     20 steps vs torch::optim (fp32, <= 1e-6); MODE:
//                                         wrap (the optimizer wrapped), cpu or nvme (its
//                                         state there), nvme-hostgrads, nvme-noread,
//                                         nvme-nowrite, nvme-serial, nvme-subgroups,
//                                         nvme-host-split (optimizer_max_in_cpu)
//                                         (see zero_test.cpp), each with an optional
//                                         "bf16-state-" prefix; a "tensor-ops" suffix
//                                         steps with ATen ops (host_step), a
//                                         "-grads-on-compute" one keeps the gradient
//                                         shards on compute until the step; on
//                                         STRATA_TEST_DEVICE (gpu_test.cpp)
// zero_worker shared STAGE                 a module registered twice, through every entry point
// zero_worker badparam                     a bad parameter (not contiguous, float64, int8) is
//                                          named by its index
// zero_worker stages OPTIM                 stage 1 and stage 2 side by side
// zero_worker accum STAGE [nvme]           4 micro-steps == one 4x batch
// zero_worker accum-bf16 [nvme[-subgroups]] bf16 gradient shards over 4 micro-steps ==
//                                         torch::optim fed the same bf16 sums (world 1)
// zero_worker fault eio|corrupt           an nvme read fails on the last rank mid-run:
//                                         every rank stops with an error, none hangs
// zero_worker clip STAGE NORM [MODE]       clip_grad_norm(1|2|inf) vs clip_grad_norm_; MODE
//                                         nvme, nvme-subgroups, tensor-ops, nvme-tensor-ops,
//                                         each with an optional "bf16-grads-" prefix
// zero_worker fp16 STAGE [MODE]            loss scaler skips exactly the overflowing steps;
//                                         MODE nvme, tensor-ops
// zero_worker bf16 STAGE                   bf16 compute copies == RNE(master), loss tracks
// zero_worker save DIR STEPS [bf16-state] | resume DIR STEPS [MODE]   consolidated state
//                                         dict across world sizes; MODE nvme, bf16-state,
//                                         bf16-state-nvme
// zero_worker kill STAGE                   the last rank dies mid-run; others must error
// zero_worker groups STAGE OPTIM [MODE]    three parameter groups vs torch::optim's; the
//                                         consolidated optimizer keeps them and loads back
#include <signal.h>

#include <array>
#include <cerrno>
#include <cmath>
#include <optional>
#include <set>
#include <string>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include "strata/base/fatal_signal.h"
#include "strata/comm/rendezvous.h"
#include "strata/engine/module_hooks.h"
#include "strata/io/fault_injection.h"
#include "zero_worker.h"

using namespace strata;
using namespace strata::testing::zero;

namespace {

comm::Communicator* g_comm = nullptr;
using strata::testing::check;
using strata::testing::test_device;

// A "bf16-grads" prefix on MODE (parity, clip): bf16 gradient shards, against the
// reference with its gradients rounded to bf16 (Reference::bf16_grads).
bool take_bf16_grads(std::string& mode, engine::EngineOptions& opts, Reference& ref) {
  if (!mode.starts_with("bf16-grads")) return false;
  opts.grad_shard_dtype = at::kBFloat16;
  ref.bf16_grads = true;
  mode = mode.substr(std::min(mode.size(), std::string_view("bf16-grads-").size()));
  return true;
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
  // A "-grads-on-compute" suffix: the gradient shards kept in compute memory until the
  // step (Note [gradients kept on compute]).
  const bool grads_on_compute = strata::testing::take_suffix(mode, "-grads-on-compute");
  opts.gradient_shards_on_compute = grads_on_compute;
  // "bf16-state": m and v in bf16, against the reference with its state rounded alike
  // and, to show the comparison can tell, against the reference without the rounding.
  const bool bf16_state = mode.starts_with("bf16-state");
  std::optional<Reference> fp32_ref;
  if (bf16_state) {
    opts.optim_state_dtype = at::kBFloat16;
    mode = mode.substr(std::min(mode.size(), std::string_view("bf16-state-").size()));
    fp32_ref.emplace(oc, test_device());
    ref.ranks = fp32_ref->ranks = static_cast<int>(g_comm->world());
  }
  // "bf16-grads": the gradient shards in bf16, against the reference with its gradients
  // rounded alike and, to show the comparison can tell, against the plain reference.
  const bool bf16_grads = take_bf16_grads(mode, opts, ref);
  if (bf16_grads) fp32_ref.emplace(oc, test_device());
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
  if (bf16_grads) {
    // Gradient shards of 2 bytes an element against 4, on whichever tier holds them.
    ToyModel other(7);
    other.to(test_device());
    engine::EngineOptions fp32_opts = opts;
    fp32_opts.grad_shard_dtype = at::kFloat;
    fp32_opts.swap.job_name += "-fp32";
    auto fp32_eng = check(engine::Engine::create(trainable(other), *g_comm, fp32_opts), "create fp32");
    const auto kind = plan::kind_index(plan::StateKind::kGrads);
    for (plan::Tier t : {plan::Tier::kHost, plan::Tier::kNvme}) {
      const std::uint64_t got = opt->memory_by_kind()[plan::tier_index(t)][kind];
      const std::uint64_t fp32 = fp32_eng->memory_by_kind()[plan::tier_index(t)][kind];
      if (got * 2 != fp32) {
        fail(fmt::format("tier {}: bf16 gradient shards hold {} bytes, fp32 ones {}", plan::tier_index(t), got, fp32));
      }
    }
  }
  if (mode == "nvme-host-split") {
    const auto by_kind = opt->memory_by_kind();
    const auto kind = plan::kind_index(plan::StateKind::kOptimizer);
    if (by_kind[plan::tier_index(plan::Tier::kHost)][kind] == 0 || by_kind[plan::tier_index(plan::Tier::kNvme)][kind] == 0)
      fail("optimizer_max_in_cpu: expected optimizer state both on host and on nvme");
  }
  if (grads_on_compute) strata::testing::expect_grads_kept_on_compute(opt->memory_by_kind());
  const at::Tensor unused_before = model.unused.detach().clone();
  for (int s = 0; s < 20; ++s) {
    // What C++ loops call on the model between steps leaves the engine's gradients
    // alone (Note [the engine's gradients]): the parameters' .grad dropped (it cut them
    // from the buffers) or zeroed (freed memory at stage 2).
    if (s % 3 > 0) model.zero_grad(/*set_to_none=*/s % 3 == 1);
    auto [x, y] = my_rows(s, kRowsPerRank);
    check(opt->backward(model.loss(x.to(test_device()), y.to(test_device()))), "backward");
    auto r = check(opt->step(), "step");
    if (!r.applied) fail("step not applied");
    ref.step(s, kRowsPerRank * g_comm->world());
    if (bf16_state) round_state_to_bf16(*ref.opt);
    if (fp32_ref) fp32_ref->step(s, kRowsPerRank * g_comm->world());
    // A wrapped torch::optim optimizer steps whole chunk shards, so a parameter that
    // never had a gradient is stepped with a zero one (documented); the fused path
    // skips it exactly as torch::optim does.
    const std::string when = fmt::format("stage {} {} step {}", stage, optim, s);
    if (bf16_state) {  // Note [bf16 state flips]: the model as a whole
      if (const double e = whole_model_error(model, ref.model); e > kBf16StateWholeTol)
        fail(fmt::format("{}: the parameters differ, relative L2 error {:.3g} > {:.0g}", when, e, kBf16StateWholeTol));
    } else {
      compare(model, ref.model, bf16_grads ? kBf16GradsTol : 1e-6, when, /*skip_unused=*/wrap);
    }
  }
  if (fp32_ref) {
    const double tol = bf16_state ? kBf16StateWholeTol : kBf16GradsTol;
    const auto error = [&](ToyModel& want) { return bf16_state ? whole_model_error(model, want) : max_error(model, want); };
    const double rounded = error(ref.model), plain = error(fp32_ref->model);
    fmt::print("{}: relative error {:.3g} against the rounded reference, {:.3g} against the plain one\n",
               bf16_state ? "bf16 state" : "bf16 gradients", rounded, plain);
    if (plain < 5 * tol) {
      fail(fmt::format("the rounded run is {:.3g} from the plain reference, too close for the comparison ({:.0g}) to "
                       "tell them apart", plain, tol));
    }
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

// bf16 gradient shards over 4 micro-steps (stage 2, world 1) against torch::optim fed the
// same sums: each micro-step's gradient (of loss / 4, as the engine scales it) added into
// a bf16 accumulator as the shard adds it. On compute the shard adds the reduced
// gradient in, acc = bf16(acc + g); with nvme records the micro-step's shard is bf16(g)
// and the record read back is added to it, acc = bf16(bf16(g) + acc). The two orders
// round differently, and either differs from rounding the whole sum once (Adam turns a
// near-zero sum's sign into a full step): the test names both.
void accum_bf16(const std::string& nvme) {
  if (g_comm->world() != 1) fail("accum-bf16 runs at world 1");
  OptimizerConfig oc = optim_config("adamw");
  Reference ref(oc);
  ToyModel model(7);
  auto opts = sharded_options(2, oc);
  opts.gradient_accumulation_steps = 4;
  opts.grad_shard_dtype = at::kBFloat16;
  if (!nvme.empty()) use_nvme(opts, "accum-bf16");
  if (nvme == "nvme-subgroups") use_sub_groups(opts);
  auto opt = check(engine::Engine::create(trainable(model), *g_comm, opts), "create");
  const std::vector<at::Tensor> params = trainable(ref.model);
  auto bf16 = [](const at::Tensor& t) { return t.to(at::kBFloat16).to(at::kFloat); };
  for (int s = 0; s < 10; ++s) {
    auto [x, y] = my_rows(s, 4 * kRowsPerRank);
    std::vector<at::Tensor> acc(params.size());
    for (int m = 0; m < 4; ++m) {
      const at::Tensor xm = x.narrow(0, m * kRowsPerRank, kRowsPerRank), ym = y.narrow(0, m * kRowsPerRank, kRowsPerRank);
      check(opt->backward(model.loss(xm, ym)), "backward");
      check(opt->step(), "step");
      torch_compat::zero_grad_keep(*ref.opt);
      (ref.model.loss(xm, ym) * 0.25).backward();
      for (std::size_t i = 0; i < params.size(); ++i) {
        const at::Tensor g = params[i].grad();
        if (!g.defined()) continue;
        if (!acc[i].defined()) acc[i] = at::zeros_like(g);
        acc[i] = nvme.empty() ? bf16(acc[i] + g) : bf16(bf16(g) + acc[i]);
      }
    }
    for (std::size_t i = 0; i < params.size(); ++i)
      if (acc[i].defined()) params[i].mutable_grad() = acc[i];
    ref.opt->step();
    compare(model, ref.model, 1e-6, fmt::format("bf16 accumulation step {}", s));
  }
}

void clip(int stage, double norm_type, std::string nvme) {
  OptimizerConfig oc = optim_config("sgd");
  Reference ref(oc);
  ToyModel model(7);
  auto opts = sharded_options(stage, oc);
  take_tensor_ops(nvme, opts);
  // bf16 shards: an element whose sharded sum rounds to the other bf16 neighbour moves
  // the norm by about 2^-8 of its share (seen: 1.6e-6 at world 2).
  const bool bf16_grads = take_bf16_grads(nvme, opts, ref);
  const double tol = bf16_grads ? kBf16GradsTol : 1e-6, norm_tol = bf16_grads ? 1e-5 : 1e-6;
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
    if (std::abs(norm - want) > norm_tol * want) fail(fmt::format("norm {} vs torch {}", norm, want));
    compare(model, ref.model, tol, fmt::format("clip norm {} step {}", norm_type, s));
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
  // A float64 or integer parameter: refused by name (chunks once made it float32).
  for (const at::Tensor& bad : {at::randn({11, 37}, at::kDouble), at::zeros({11, 37}, at::kChar)}) {
    params = model.parameters();
    params[2] = bad;
    auto eng = engine::Engine::create(params, *g_comm, sharded_options(3, optim_config("sgd")));
    const std::string want = fmt::format("parameter 2 of unit 'model' is {}: the engine shards float32", c10::toString(bad.scalar_type()));
    if (eng || eng.error().code() != ErrorCode::kInvalidArgument || eng.error().message().find(want) == std::string::npos)
      fail(eng ? "a " + std::string(c10::toString(bad.scalar_type())) + " parameter was accepted" : eng.error().to_string());
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
  strata::install_fatal_signal_report("zero_worker");  // Note [fatal signal report]
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
  else if (mode == "accum-bf16") accum_bf16(a.size() > 1 ? a[1] : "");
  else if (mode == "clip") clip(std::stoi(a.at(1)), a.at(2) == "inf" ? INFINITY : std::stod(a.at(2)), a.size() > 3 ? a[3] : "");
  else if (mode == "fp16") fp16(std::stoi(a.at(1)), a.size() > 2 ? a[2] : "");
  else if (mode == "bf16") bf16(std::stoi(a.at(1)));
  else if (mode == "save") save(a.at(1), std::stoi(a.at(2)), a.size() > 3 ? a[3] : "");
  else if (mode == "resume") resume(a.at(1), std::stoi(a.at(2)), a.size() > 3 ? a[3] : "");
  else if (mode == "kill") kill(std::stoi(a.at(1)));
  else if (mode == "groups") groups(std::stoi(a.at(1)), a.at(2), a.size() > 3 ? a[3] : "");
  else fail("unknown mode " + mode);
  fmt::print("OK\n");
  return 0;
}
