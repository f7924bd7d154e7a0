// One rank of the engine's tests on small models of a few units
// (tests/engine/zero3_test.cpp starts N of these). Each rank also trains the reference —
// the same model, unsharded, plain torch::optim, on the whole job's batch — and compares.
// "OK" and exit 0 on success, 1 on a mismatch, 3 on an expected failure.
//
// units_worker branch                     a data-dependent path invalidates the trace
// units_worker diverge                    traces that differ across ranks are an error
// units_worker nested                     a unit called inside another (units_worker_nesting.cpp)
// units_worker nested_tail                 ... whose output is the enclosing unit's output
// units_worker adopt                      a unit computing with another module's parameter
// units_worker routed                     a leaf unit whose inner units differ across ranks
// units_worker tuple                      a unit returning a tuple
// units_worker awkward STAGE              frozen / no-grad / twice-called units vs LibTorch at
//                                         every placement
// units_worker bwdbudget                  an over-budget buffer in backward is "cannot fit"
// units_worker bwdraises STAGE            the model's own backward throws: its exception,
//                                         and a skipped batch leaves nothing behind
// units_worker bigtier CASE               nvme records of 64 MiB: stage 2 optimizer state,
//                                         stage 3 parameter shards and optimizer state,
//                                         2-bf16-split bf16 state and gradients split host/nvme,
//                                         3-grads-on-compute gradient shards kept on compute
#include <array>
#include <cmath>
#include <optional>
#include <string>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>

#include "strata/base/fatal_signal.h"
#include "strata/comm/torch_compat.h"
#include "strata/comm/rendezvous.h"
#include "strata/engine/engine.h"
#include "strata/engine/module_hooks.h"
#include "support/worker.h"
#include "awkward_model.h"
#include "bf16_state_reference.h"
#include "units_worker.h"
#include "toy_model.h"

using namespace strata;
using strata::testing::rel_error;
using namespace strata::testing::units;

namespace {

comm::Communicator* g_comm = nullptr;
using strata::testing::check;
using strata::testing::fail;

// Three units and a data-dependent path: every third step skips unit `b` and runs `c`.
struct Branchy : torch::nn::Module {
  torch::nn::Linear a{nullptr}, b{nullptr}, c{nullptr}, head{nullptr};
  Branchy() {
    a = register_module("a", torch::nn::Linear(16, 32));
    b = register_module("b", torch::nn::Linear(32, 32));
    c = register_module("c", torch::nn::Linear(32, 32));
    head = register_module("head", torch::nn::Linear(32, 4));
  }
  at::Tensor forward(const at::Tensor& x, bool take_c) {
    at::Tensor h = at::tanh(engine::forward(a, x));
    h = at::tanh(take_c ? engine::forward(c, h) : engine::forward(b, h));
    return engine::forward(head, h);
  }
};

void branch() {
  at::manual_seed(3);
  auto model = std::make_shared<Branchy>();
  at::manual_seed(3);
  auto ref = std::make_shared<Branchy>();
  engine::EngineOptions o;
  o.optimizer.type = OptimizerType::kAdam;
  o.optimizer.adam_w_mode = false;
  o.optimizer.lr = 1e-2;
  o.chunks.chunk_size_elems = 512;
  o.chunks.io_align_bytes = 64;
  o.schedule.prefetch_bucket_bytes = 1 << 20;
  auto eng = check(engine::shard(*model, *g_comm, o), "shard");
  torch::optim::Adam ref_opt(ref->parameters(), torch::optim::AdamOptions(1e-2));
  auto take_c = [](int step) { return step % 3 == 2; };
  train_like_reference(
      *eng, [&](const at::Tensor& x, int step) { return model->forward(x, take_c(step)); },
      [&](const at::Tensor& x, int step) { return ref->forward(x, take_c(step)); }, ref_opt, ref->parameters(), 12, 70,
      /*scheduled_from=*/1000);
  if (eng->last_metrics().trace_invalidations < 3) fail("the branch should have invalidated the trace");
}

// Rank 1 takes the other branch in step 0: the recorded traces differ, and the hash
// comparison at the end of the step must say so (b and c have equal chunk sizes, so
// the gathers themselves do not fail first).
void diverge() {
  at::manual_seed(3);
  auto model = std::make_shared<Branchy>();
  engine::EngineOptions o;
  o.optimizer.type = OptimizerType::kSGD;
  o.chunks.chunk_size_elems = 512;
  o.chunks.io_align_bytes = 64;
  auto eng = check(engine::shard(*model, *g_comm, o), "shard");
  at::Tensor x = at::randn({4, 16}), y = at::randn({4, 4});
  auto st = eng->backward(at::mse_loss(model->forward(x, g_comm->rank() == 1), y));
  if (st) fail("diverging traces were not detected");
  strata::testing::expected_failure(st.error());
}

// The awkward model (awkward_model.h) against plain LibTorch at one stage and placement:
// losses per step, the consolidated parameters, the frozen weight bit for bit, and the
// loss of the live sharded model against a plain model loaded with the consolidated
// parameters. Placements: none, optim_cpu, optim_nvme, params_host, params_nvme (stage 3:
// parameter shards and optimizer state there), nvme_split (optimizer sub-groups, one
// Load buffer, max_in_cpu), budget (a compute budget; at stage 3 it forces evictions),
// bf16_state (the momentum in bf16 on host, against the reference's rounded alike),
// bf16_grads (bf16 gradient shards on nvme, against the reference's gradients rounded
// alike),
// optim_host_split (optimizer_max_in_cpu: the first chunk's state on host, the rest on
// nvme), grads_on_compute (the same split, the gradient shards kept on compute until the
// step at stages 2-3), tensor_ops (host_step: ATen ops step the state on nvme; at stage 3 the
// parameter shards there too), groups (two parameter groups: the matrices decayed, the
// vectors at half the lr without decay; the state on nvme, at stage 3 the parameter
// shards too).
void awkward_case(int stage, const std::string& placement) {
  using strata::testing::AwkwardModel;
  const std::string what = fmt::format("stage {} {}", stage, placement);
  const c10::Device dev = strata::testing::test_device();
  auto model = std::make_shared<AwkwardModel>(21);
  AwkwardModel ref(21);
  const at::Tensor frozen_before = model->frozen->weight.detach().clone();
  model->to(dev);
  ref.to(dev);
  std::uint64_t model_bytes = 0;
  for (const auto& p : ref.parameters()) model_bytes += static_cast<std::uint64_t>(p.numel()) * 4;
  engine::EngineOptions o = small_unit_options();
  o.stage = stage;
  o.optimizer.weight_decay = 0.01;
  o.chunks.chunk_size_elems = 2048;
  o.optimizer_threads = 1;
  o.schedule.persistence_threshold_elems = 0;
  auto nvme = [&] {
    o.swap.nvme_path = std::getenv("STRATA_TEST_NVME");
    o.swap.job_name = fmt::format("awkward-{}-{}", stage, placement);
    o.swap.min_io_bytes = 0;
  };
  if (placement == "optim_cpu") {
    o.optim_device = OffloadDevice::kCpu;
  } else if (placement == "optim_nvme") {
    o.optim_device = OffloadDevice::kNvme;
    nvme();
  } else if (placement == "params_host") {
    o.param_device = o.optim_device = OffloadDevice::kCpu;
  } else if (placement == "params_nvme") {
    o.param_device = o.optim_device = OffloadDevice::kNvme;
    nvme();
  } else if (placement == "nvme_split") {
    // Optimizer state in sub-groups of 1024 elements (two per 4096-element chunk shard
    // at world 2, Note [optimizer sub-groups]); at stage 3 the parameter shards on nvme
    // too, through a single Load buffer, with the first chunk's shard kept on host by
    // max_in_cpu.
    o.optim_device = OffloadDevice::kNvme;
    o.chunks.chunk_size_elems = 4096;
    o.optim_pipeline.sub_group_elems = 1024;
    o.optim_pipeline.buffer_count = 6;
    if (stage == 3) {
      o.param_device = OffloadDevice::kNvme;
      o.param_staging.buffer_count = 1;
      o.param_staging.max_in_cpu = 2048;
    }
    nvme();
  } else if (placement == "budget") {
    o.optim_device = OffloadDevice::kCpu;
    if (stage == 3) {
      // Small chunks and a budget under the whole model: chunks are evicted and gathered
      // again within a step.
      o.param_device = OffloadDevice::kCpu;
      o.chunks.chunk_size_elems = 512;
      o.schedule.budget_bytes[0] = model_bytes;
    } else {
      o.schedule.budget_bytes[0] = model_bytes * 5 / 2;  // whole parameters, gradients, in-flight buffers
    }
  } else if (placement == "bf16_state") {
    o.optim_device = OffloadDevice::kCpu;
    o.optim_state_dtype = at::kBFloat16;
  } else if (placement == "bf16_grads") {
    // bf16 gradient shards, on nvme with the optimizer state (Note [gradients on nvme]).
    o.optim_device = OffloadDevice::kNvme;
    o.grad_shard_dtype = at::kBFloat16;
    nvme();
  } else if (placement == "optim_host_split") {
    o.optim_device = OffloadDevice::kNvme;
    o.optim_max_in_cpu = o.chunks.chunk_size_elems / 2;  // one chunk shard at world 2
    nvme();
  } else if (placement == "grads_on_compute") {
    // Note [gradients kept on compute]: at stages 2-3 the gradient shards stay on compute
    // until the step, the optimizer state split between host and nvme (no effect at
    // stage 1, which the case checks too).
    o.gradient_shards_on_compute = true;
    o.optim_device = OffloadDevice::kNvme;
    o.optim_max_in_cpu = o.chunks.chunk_size_elems / 2;
    if (stage == 3) o.param_device = OffloadDevice::kCpu;
    nvme();
  } else if (placement == "tensor_ops") {
    o.host_step = engine::EngineOptions::StepKernels::kTensorOps;
    o.optim_device = OffloadDevice::kNvme;
    if (stage == 3) o.param_device = OffloadDevice::kNvme;
    nvme();
  } else if (placement == "groups") {
    o.optim_device = OffloadDevice::kNvme;
    if (stage == 3) o.param_device = OffloadDevice::kNvme;
    nvme();
  } else if (placement != "none") {
    fail("unknown placement " + placement);
  }
  // placement "groups": the trainable matrices, and the trainable vectors.
  const auto groups_of = [](AwkwardModel& m) {
    std::array<std::vector<at::Tensor>, 2> gs;
    for (auto& p : m.parameters())
      if (p.requires_grad()) gs[p.dim() == 2 ? 0 : 1].push_back(p);
    return gs;
  };
  constexpr double kVectorScale = 0.5;
  if (placement == "groups") {
    auto gs = groups_of(*model);
    o.param_groups = {{.params = gs[0]}, {.params = gs[1], .lr_scale = kVectorScale, .weight_decay = 0.0}};
  }
  // bf16 state or gradients: within a bf16 rounding flip of the reference rounded alike
  // (bf16_state_reference.h).
  const bool bf16_state = placement == "bf16_state", bf16_grads = placement == "bf16_grads";
  const double tol = bf16_state || bf16_grads ? strata::testing::kBf16StateTol : 1e-5;
  auto made = engine::shard(*model, *g_comm, o);
  if (stage < 3 && (placement == "params_host" || placement == "params_nvme")) {
    // Parameters are only sharded, so only offloaded, at stage 3.
    if (made || made.error().code() != ErrorCode::kInvalidArgument || made.error().message().find("stage 3") == std::string::npos)
      fail(what + ": offloading parameters should be refused, got " + (made ? "an engine" : made.error().to_string()));
    return;
  }
  auto eng = check(std::move(made), "shard");
  if (placement == "optim_host_split") {
    const auto by_kind = eng->memory_by_kind();
    const auto kind = plan::kind_index(plan::StateKind::kOptimizer);
    if (by_kind[plan::tier_index(plan::Tier::kHost)][kind] == 0 || by_kind[plan::tier_index(plan::Tier::kNvme)][kind] == 0)
      fail(what + ": expected optimizer state both on host and on nvme");
  }
  if (placement == "grads_on_compute" && stage >= 2) strata::testing::expect_grads_kept_on_compute(eng->memory_by_kind());
  std::vector<at::Tensor> ref_params;
  for (auto& p : ref.parameters())
    if (p.requires_grad()) ref_params.push_back(p);
  const auto ref_options = [](double lr, double decay) {
    return std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(lr).momentum(0.9).weight_decay(decay));
  };
  std::vector<torch::optim::OptimizerParamGroup> ref_groups;
  if (placement == "groups") {
    auto gs = groups_of(ref);
    ref_groups.emplace_back(gs[0], ref_options(0.05, 0.01));
    ref_groups.emplace_back(gs[1], ref_options(0.05 * kVectorScale, 0.0));
  } else {
    ref_groups.emplace_back(ref_params, ref_options(0.05, 0.01));
  }
  torch::optim::SGD ref_opt(std::move(ref_groups), torch::optim::SGDOptions(0.05));
  const std::int64_t rows = 4;
  std::uint64_t gathers = 0;
  for (int s = 0; s < 8; ++s) {
    auto [cx, cy] = strata::testing::awkward_batch(s, rows * g_comm->world());
    const at::Tensor x = cx.to(dev), y = cy.to(dev);
    at::Tensor loss = model->loss(x.narrow(0, rows * g_comm->rank(), rows), y.narrow(0, rows * g_comm->rank(), rows));
    check(eng->backward(loss), "backward");
    check(eng->step(), "step");
    gathers = eng->last_metrics().gathers;
    torch_compat::zero_grad_keep(ref_opt);
    at::Tensor ref_loss = ref.loss(x, y);
    ref_loss.backward();
    if (bf16_grads)
      for (auto& p : ref_params)
        if (p.grad().defined()) p.grad().copy_(p.grad().to(at::kBFloat16));
    ref_opt.step();
    if (bf16_state) strata::testing::round_state_to_bf16(ref_opt);
    at::Tensor l = loss.detach().to(at::kCPU).clone();
    check(g_comm->all_reduce(l, comm::ReduceOp::kAvg).wait(), "loss avg");
    if (std::abs(l.item<double>() - ref_loss.item<double>()) > tol * std::abs(ref_loss.item<double>()))
      fail(fmt::format("{} step {}: loss {} vs reference {}", what, s, l.item<double>(), ref_loss.item<double>()));
  }
  const std::size_t n_chunks = eng->store().num_chunks();
  if (stage == 3 && placement == "budget" && gathers <= n_chunks)
    fail(fmt::format("{}: {} gathers in a step over {} chunks: the budget forced no eviction", what, gathers, n_chunks));
  if (bf16_state) check_bf16_momentum(*eng, what);
  auto got = check(eng->consolidated_params(), "consolidated_params");
  auto named = ref.named_parameters();
  AwkwardModel plain(99);
  auto plain_named = plain.named_parameters();
  at::NoGradGuard no_grad;
  for (const auto& item : model->named_parameters()) {
    auto it = std::find_if(eng->params().begin(), eng->params().end(), [&](const at::Tensor& p) { return p.is_same(item.value()); });
    const at::Tensor& value = got.at(static_cast<std::size_t>(it - eng->params().begin()));
    if (const double e = rel_error(value, named[item.key()].to(at::kCPU)); e > tol)
      fail(fmt::format("{}: parameter {} differs from the reference, relative error {:.3g}", what, item.key(), e));
    if (item.key() == "frozen.weight" && !at::equal(value, frozen_before)) fail(what + ": the frozen weight changed");
    plain_named[item.key()].copy_(value);
  }
  // The live sharded model and a plain model with the consolidated weights compute the
  // same loss on a fresh batch.
  auto [x, y] = strata::testing::awkward_batch(100, 8);
  const double live = model->loss(x.to(dev), y.to(dev)).item<double>(), cons = plain.loss(x, y).item<double>();
  if (std::abs(live - cons) > 1e-6 * std::abs(cons))
    fail(fmt::format("{}: live model loss {} but consolidated weights give {}", what, live, cons));
}

void awkward(int stage) {
  for (const char* p : {"none", "optim_cpu", "optim_nvme", "params_host", "params_nvme", "nvme_split", "budget",
                        "bf16_state", "bf16_grads", "optim_host_split", "grads_on_compute", "tensor_ops", "groups"})
    awkward_case(stage, p);
}

// A unit whose forward returns a tuple: both outputs feed the rest of the model, and the
// unit's backward is one access however many outputs it has.
struct TwoWayImpl : torch::nn::Module {
  torch::nn::Linear lin{nullptr};
  TwoWayImpl() { lin = register_module("lin", torch::nn::Linear(32, 32)); }
  std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x) {
    at::Tensor y = lin->forward(x);
    return {y.narrow(1, 0, 16), y.narrow(1, 16, 16)};
  }
};
TORCH_MODULE(TwoWay);

struct TupleModel : torch::nn::Module {
  torch::nn::Linear in{nullptr}, out{nullptr};
  TwoWay split{nullptr};
  TupleModel() {
    in = register_module("in", torch::nn::Linear(16, 32));
    split = register_module("split", TwoWay());
    out = register_module("out", torch::nn::Linear(32, 4));
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = at::tanh(engine::forward(in, x));
    auto [a, b] = engine::forward(split, h);
    return engine::forward(out, at::cat({at::tanh(a), b * b}, 1));
  }
};

void tuple_outputs() {
  at::manual_seed(8);
  auto model = std::make_shared<TupleModel>();
  at::manual_seed(8);
  auto ref = std::make_shared<TupleModel>();
  engine::EngineOptions o = small_unit_options();
  o.schedule.persistence_threshold_elems = 0;
  auto eng = check(engine::shard(*model, *g_comm, o), "shard");
  torch::optim::SGD ref_opt(ref->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  train_like_reference(
      *eng, [&](const at::Tensor& x, int) { return model->forward(x); },
      [&](const at::Tensor& x, int) { return ref->forward(x); }, ref_opt, ref->parameters(), 10, 40, /*scheduled_from=*/2);
  // Three units, each one forward and one backward access.
  if (eng->schedule() == nullptr || eng->schedule()->accesses.size() != 6)
    fail(fmt::format("the trace has {} accesses, expected 6", eng->schedule() ? eng->schedule()->accesses.size() : 0));
}

// An outer unit that calls an inner unit it does not own: the provisional check sees
// one unit at a time, but backward holds both, and the inner one's gradient buffer does
// not fit. The error must reach backward()'s caller as what it is.
struct Wrapper : torch::nn::Module {
  torch::nn::Linear a{nullptr};
  torch::nn::Linear inner;  // not registered here: a unit of its own
  explicit Wrapper(torch::nn::Linear in) : inner(std::move(in)) { a = register_module("a", torch::nn::Linear(32, 32)); }
  at::Tensor forward(const at::Tensor& x) { return at::tanh(engine::forward(inner, at::tanh(a->forward(x)))); }
};
struct BudgetModel : torch::nn::Module {
  torch::nn::Linear inner{nullptr}, head{nullptr};
  std::shared_ptr<Wrapper> outer;
  BudgetModel() {
    inner = register_module("inner", torch::nn::Linear(32, 32));
    outer = register_module("outer", std::make_shared<Wrapper>(inner));
    head = register_module("head", torch::nn::Linear(32, 32));
  }
  at::Tensor forward(const at::Tensor& x) { return engine::forward(head, engine::forward(outer, x)); }
};

void backward_budget() {
  auto model = std::make_shared<BudgetModel>();
  engine::EngineOptions o;
  o.optimizer.type = OptimizerType::kSGD;
  o.chunks.chunk_size_elems = 1056;  // one Linear(32, 32) per chunk
  o.chunks.io_align_bytes = 64;
  o.param_device = OffloadDevice::kCpu;
  o.optim_device = OffloadDevice::kCpu;
  o.schedule.persistence_threshold_elems = 0;
  o.schedule.budget_bytes[0] = 2 * 1056 * 4 + 1024;  // two chunks: one unit and its gradients
  std::vector<engine::ModuleUnit> units = {{.module = model->outer, .name = "outer"},
                                           {.module = model->inner.ptr(), .name = "inner"},
                                           {.module = model->head.ptr(), .name = "head"}};
  auto eng = check(engine::shard(*model, *g_comm, o, units), "shard");
  at::Tensor x = at::randn({4, 32}), y = at::randn({4, 32});
  auto st = eng->backward(at::mse_loss(model->forward(x), y));
  if (st) fail("the gradient buffer that does not fit was not reported");
  if (st.error().code() != ErrorCode::kResourceExhausted) fail("the error lost its type: " + st.error().to_string());
  strata::testing::expected_failure(st.error());
}

// Doubles; its backward throws while g_refuse is set (a custom Function refusing a batch).
bool g_refuse = false;
struct Refuse : torch::autograd::Function<Refuse> {
  static at::Tensor forward(torch::autograd::AutogradContext*, const at::Tensor& x) { return x * 2; }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*, torch::autograd::variable_list g) {
    if (g_refuse) throw std::invalid_argument("this batch is refused by the model's backward");
    return {g[0] * 2};
  }
};

struct RefusingModel : torch::nn::Module {
  torch::nn::Linear a{nullptr}, b{nullptr};
  RefusingModel() {
    a = register_module("a", torch::nn::Linear(16, 32));
    b = register_module("b", torch::nn::Linear(32, 4));
  }
  at::Tensor forward(const at::Tensor& x) { return engine::forward(b, Refuse::apply(at::tanh(engine::forward(a, x)))); }
};

// Note [the model's exceptions] (engine.cpp): the model's backward throws at batch
// `refused` on every rank. backward() names the exception and hands it over as it was
// thrown; b's gradients, made before it, go with zero_grad(); so the run ends bit for
// bit where one that never saw the batch does. At stage 3 the parameter shards and the
// optimizer state are on nvme.
std::vector<at::Tensor> refusing_run(int stage, const std::vector<int>& batches, int refused) {
  at::manual_seed(5);
  auto model = std::make_shared<RefusingModel>();
  engine::EngineOptions o = small_unit_options();
  o.stage = stage;
  o.schedule.persistence_threshold_elems = 0;
  o.optim_device = OffloadDevice::kNvme;
  if (stage == 3) o.param_device = OffloadDevice::kNvme;
  o.swap.nvme_path = std::getenv("STRATA_TEST_NVME");
  o.swap.job_name = fmt::format("bwdraises-{}-{}", stage, batches.size());
  o.swap.min_io_bytes = 0;
  auto eng = check(engine::shard(*model, *g_comm, o), "shard");
  for (int s : batches) {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(static_cast<std::uint64_t>(s));
    at::Tensor x = at::randn({4, 16}, g), y = at::randn({4, 4}, g);
    g_refuse = s == refused;
    Status st = eng->backward(at::mse_loss(model->forward(x), y));
    g_refuse = false;
    if (s != refused) {
      check(std::move(st), "backward");
      check(eng->step(), "step");
      continue;
    }
    if (st || st.error().to_string().find("the model's backward raised: this batch is refused") == std::string::npos)
      fail("the refused backward's error does not name the exception: " + (st ? "ok" : st.error().to_string()));
    try {
      std::exception_ptr raised = eng->take_backward_exception();
      if (!raised) fail("backward() kept no exception");
      std::rethrow_exception(raised);
    } catch (const std::invalid_argument& e) {
      if (std::string(e.what()) != "this batch is refused by the model's backward") fail("the exception changed");
    }
    check(eng->zero_grad(), "zero_grad");
  }
  return check(eng->consolidated_params(), "consolidated");
}

void backward_raises(int stage) {
  const std::vector<at::Tensor> skipped = refusing_run(stage, {0, 1, 2, 3}, 1), never = refusing_run(stage, {0, 2, 3}, -1);
  for (std::size_t i = 0; i < never.size(); ++i)
    if (!at::equal(skipped[i], never[i])) fail(fmt::format("parameter {} differs from the run without the batch", i));
}

}  // namespace

int main(int argc, char** argv) {
  strata::install_fatal_signal_report("units_worker");  // Note [fatal signal report]
  std::vector<std::string> a(argv + 1, argv + argc);
  if (a.empty()) fail("usage: units_worker MODE ...");
  auto comm = check(comm::init_from_env(), "init");
  g_comm = comm.get();
  strata::testing::worker_comm() = g_comm;
  const std::string& mode = a[0];
  if (mode == "branch") branch();
  else if (mode == "diverge") diverge();
  else if (mode == "nested") nested(/*tail=*/false);
  else if (mode == "nested_tail") nested(/*tail=*/true);
  else if (mode == "tuple") tuple_outputs();
  else if (mode == "adopt") adopt();
  else if (mode == "routed") routed();
  else if (mode == "awkward") awkward(std::stoi(a.at(1)));
  else if (mode == "bwdbudget") backward_budget();
  else if (mode == "bwdraises") backward_raises(std::stoi(a.at(1)));
  else if (mode == "bigtier") bigtier(a.at(1));
  else fail("unknown mode " + mode);
  fmt::print("OK\n");
  return 0;
}
