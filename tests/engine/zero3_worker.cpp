// One rank of the ZeRO-3 tests (tests/engine/zero3_test.cpp starts N of these). Each
// rank also trains the reference — the same model, unsharded, plain torch::optim, on
// the whole job's batch — and compares. "OK" and exit 0 on success, 1 on a mismatch,
// 3 on an expected failure.
//
// zero3_worker parity PLACEMENT [bf16]   PLACEMENT: compute | host | quarter | auto | nvme |
//                                        persist | searched
// zero3_worker memory                     max_live bound and shard bytes
// zero3_worker branch                     a data-dependent path invalidates the trace
// zero3_worker overbudget                 a compute budget that cannot fit fails at setup
// zero3_worker awkward STAGE              frozen / no-grad / twice-called units vs LibTorch at
//                                        every placement
// zero3_worker tuple                      a unit returning a tuple
// zero3_worker gradmem                    stage 2 holds 1/world of stage 0's gradient bytes
// zero3_worker bwdbudget                  an over-budget buffer in backward is "cannot fit"
#include <cmath>
#include <functional>
#include <fstream>
#include <set>
#include <string>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "strata/base/units.h"
#include "strata/comm/rendezvous.h"
#include "strata/engine/engine.h"
#include "strata/engine/module_hooks.h"
#include "strata/nn/models/gpt.h"
#include "support/multirank.h"
#include "support/worker.h"
#include "awkward_model.h"
#include "toy_model.h"

using namespace strata;
using strata::testing::rel_error;

namespace {

comm::Communicator* g_comm = nullptr;
using strata::testing::check;
using strata::testing::fail;
constexpr std::int64_t kBatchPerRank = 2, kSeq = 16;


// Twelve narrow blocks: each block is a small part of the model, so a compute budget of
// a quarter of the model holds a block's parameters and gradients with room to prefetch.
nn::GPTConfig model_config() { return check(nn::gpt_config("custom:12x64x4", 64, 32), "gpt config"); }

std::pair<at::Tensor, at::Tensor> batch(std::int64_t step, std::int64_t rows) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(500 + step);
  at::Tensor data = at::randint(0, 64, {rows, kSeq + 1}, g, at::kLong);
  return {data.narrow(1, 0, kSeq).contiguous(), data.narrow(1, 1, kSeq).contiguous()};
}

std::pair<at::Tensor, at::Tensor> my_rows(std::int64_t step) {
  auto [x, y] = batch(step, kBatchPerRank * g_comm->world());
  return {x.narrow(0, g_comm->rank() * kBatchPerRank, kBatchPerRank), y.narrow(0, g_comm->rank() * kBatchPerRank, kBatchPerRank)};
}

engine::EngineOptions options(const std::string& placement, const nn::GPTConfig& cfg, std::uint64_t* model_bytes) {
  engine::EngineOptions o;
  // SGD with momentum: Adam turns the rounding noise in gradients that are exactly zero
  // in theory (attention key biases) into full-size steps, which no two summation
  // orders agree on; the ZeRO-1/2 tests cover Adam parity on a model without them.
  o.optimizer.type = OptimizerType::kSGD;
  o.optimizer.lr = 0.1;
  o.optimizer.momentum = 0.9;
  o.optimizer.weight_decay = 0.01;
  o.chunks.chunk_size_elems = 8192;
  o.chunks.io_align_bytes = 64;
  o.optimizer_threads = 1;
  o.schedule.prefetch_bucket_bytes = 1 << 20;
  *model_bytes = static_cast<std::uint64_t>(cfg.parameter_count()) * 4;
  if (placement == "host") {
    o.param_device = OffloadDevice::kCpu;
    o.optim_device = OffloadDevice::kCpu;
  } else if (placement == "quarter") {
    // A compute tier of a quarter of the model: chunks are evicted and prefetched
    // every step; shards and optimizer state live on host.
    o.param_device = OffloadDevice::kCpu;
    o.optim_device = OffloadDevice::kCpu;
    o.schedule.budget_bytes[0] = *model_bytes / 4;
  } else if (placement == "auto") {
    o.placement = Placement::kAuto;
    o.schedule.budget_bytes[0] = *model_bytes / 2;
  } else if (placement == "nvme") {
    o.param_device = OffloadDevice::kNvme;
    o.optim_device = OffloadDevice::kNvme;
    o.swap.nvme_path = std::getenv("STRATA_TEST_NVME");
    o.swap.job_name = "zero3test";
    o.swap.min_io_bytes = 0;  // every record on disk, however small
  } else if (placement == "persist") {
    // Parameters under 4096 elements (LayerNorms, biases) pack into persistent chunks
    // that stay gathered; with a budget so that the rest is evicted and prefetched.
    o.schedule.persistence_threshold_elems = 4096;
    o.param_device = OffloadDevice::kCpu;
    o.optim_device = OffloadDevice::kCpu;
    o.schedule.budget_bytes[0] = *model_bytes / 3;
  } else if (placement == "searched") {
    // The quarter budget with the chunk size left to the search: without a bound it
    // packs the model into chunks larger than the whole budget.
    o.param_device = OffloadDevice::kCpu;
    o.optim_device = OffloadDevice::kCpu;
    o.schedule.budget_bytes[0] = *model_bytes / 4;
    o.chunks.chunk_size_elems = 0;
    o.chunks.search_step_elems = static_cast<std::uint64_t>(cfg.hidden);
  } else if (placement != "compute") {
    fail("unknown placement " + placement);
  }
  return o;
}

// max |a - b| / max(max |b|, 0.02): relative error per tensor, with a floor at the init
// scale so that tensors whose values are themselves rounding noise (attention key
// biases, whose exact gradient is zero) are compared against the model's scale.
double scaled_error(const at::Tensor& a, const at::Tensor& b) {
  const double scale = std::max(b.abs().max().item<double>(), 0.02);
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() / scale;
}

void compare_params(engine::Engine& eng, nn::GPT& ref, double tol, const std::string& when) {
  auto got = check(eng.consolidated_params(), "consolidated_params");
  auto want = ref->parameters();
  if (got.size() != want.size()) fail("parameter count differs");
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double e = scaled_error(got[i], want[i]);
    if (e > tol) fail(fmt::format("{}: parameter {} differs, relative error {:.3g} > {:.0g}", when, i, e, tol));
  }
}

void parity(const std::string& placement, bool bf16) {
  const nn::GPTConfig cfg = model_config();
  nn::GPT model(cfg), ref(cfg);
  model->init_weights(11);
  ref->init_weights(11);
  std::uint64_t model_bytes = 0;
  engine::EngineOptions o = options(placement, cfg, &model_bytes);
  if (bf16) o.compute_dtype = at::kBFloat16;
  if (bf16) {
    o.optimizer.type = OptimizerType::kAdamW;
    o.optimizer.lr = 3e-3;
  }
  auto eng = check(engine::shard(*model, *g_comm, o), "shard");
  if (placement == "persist") {
    int persistent = 0;
    for (const auto& c : eng->store().layout().chunks) persistent += c.kind == plan::ChunkKind::kPersistent;
    if (persistent == 0) fail("no persistent chunk with a persistence threshold of 4096");
  }
  if (placement == "searched") {
    const std::uint64_t bound = o.schedule.budget_bytes[0] / 4 / c10::elementSize(o.compute_dtype);
    for (const auto& c : eng->store().layout().chunks) {
      if (c.kind == plan::ChunkKind::kShared && c.size_elems > bound + eng->store().layout().align_elems)
        fail(fmt::format("searched chunk of {} elements, above a quarter of the budget ({})", c.size_elems, bound));
    }
  }
  std::unique_ptr<torch::optim::Optimizer> ref_opt;
  if (bf16) ref_opt = std::make_unique<torch::optim::AdamW>(ref->parameters(), torch::optim::AdamWOptions(3e-3).weight_decay(0.01));
  else ref_opt = std::make_unique<torch::optim::SGD>(ref->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(0.01));
  const int steps = 20;
  double hit_rate_sum = 0;
  int hit_steps = 0;
  for (int s = 0; s < steps; ++s) {
    auto [x, y] = my_rows(s);
    at::Tensor loss = model->loss(x, y);
    check(eng->backward(loss), "backward");
    check(eng->step(), "step");
    auto [fx, fy] = batch(s, kBatchPerRank * g_comm->world());
    ref_opt->zero_grad();
    at::Tensor ref_loss = ref->loss(fx, fy);
    ref_loss.backward();
    ref_opt->step();
    at::Tensor l = loss.detach().to(at::kFloat).clone();
    check(g_comm->all_reduce(l, comm::ReduceOp::kAvg).wait(), "loss avg");
    const double got = l.item<double>(), want = ref_loss.item<double>();
    const double tol = bf16 ? 0.02 : 1e-5;
    if (std::abs(got - want) > tol * std::abs(want)) fail(fmt::format("step {}: loss {} vs reference {}", s, got, want));
    const auto& m = eng->last_metrics();
    if (s >= 2 && !m.scheduled) fail(fmt::format("step {} was not driven by the schedule", s));
    if (s >= 2 && m.gathers > 0) hit_rate_sum += m.prefetch_hit_rate, ++hit_steps;
    if (!bf16 && s % 5 == 4) compare_params(*eng, ref, 1e-5, fmt::format("{} step {}", placement, s));
    if (placement == "quarter" && m.peak[0] > model_bytes / 4) {
      fail(fmt::format("compute peak {} over the budget {}", m.peak[0], model_bytes / 4));
    }
  }
  const auto& m = eng->last_metrics();
  fmt::print("rank {} {}: gathers {} hit rate {:.2f} (mean {:.2f}) host->compute {}+{} planned {}+{} peak compute {}\n",
             g_comm->rank(), placement, m.gathers, m.prefetch_hit_rate, hit_steps ? hit_rate_sum / hit_steps : 0.0,
             m.moved.host_to_compute, m.moved.compute_to_host, m.planned.host_to_compute, m.planned.compute_to_host,
             m.peak[0]);
  if (placement == "quarter" && m.gathers == 0) fail("a quarter budget should gather every step");
  if ((placement == "host" || placement == "quarter") && m.moved.host_compute() != m.planned.host_compute()) {
    fail(fmt::format("host<->compute bytes {} differ from the plan's {}", m.moved.host_compute(), m.planned.host_compute()));
  }
}

void memory() {
  const nn::GPTConfig cfg = model_config();
  nn::GPT model(cfg);
  model->init_weights(11);
  std::uint64_t model_bytes = 0;
  engine::EngineOptions o = options("compute", cfg, &model_bytes);
  // Eight chunks: more than the largest unit needs (a block touches five), far less
  // than the model (49 chunks), so the bound is what limits prefetching.
  o.schedule.max_live_bytes = 8 * 8192 * 4;
  auto eng = check(engine::shard(*model, *g_comm, o), "shard");
  const std::uint64_t chunk_bytes = 8192 * 4;
  const std::string trace_path = fmt::format("{}/trace{}.json", std::getenv("STRATA_TEST_NVME"), g_comm->rank());
  for (int s = 0; s < 6; ++s) {
    if (s == 3) eng->trace_next_step(trace_path);
    auto [x, y] = my_rows(s);
    check(eng->backward(model->loss(x, y)), "backward");
    check(eng->step(), "step");
    const auto& m = eng->last_metrics();
    if (m.peak_gathered_bytes > o.schedule.max_live_bytes + chunk_bytes) {
      fail(fmt::format("step {}: gathered peak {} > max_live {} + one chunk", s, m.peak_gathered_bytes, o.schedule.max_live_bytes));
    }
  }
  // The Chrome trace of step 3 has events on the compute, gather, reduce-scatter and
  // optimizer tracks.
  std::ifstream in(trace_path);
  if (!in) fail("no trace file " + trace_path);
  nlohmann::json trace = nlohmann::json::parse(in);
  std::set<int> tracks;
  for (const auto& e : trace["traceEvents"])
    if (e["ph"] == "X") tracks.insert(e["tid"].get<int>());
  if (tracks != std::set<int>{0, 1, 2, 4}) fail(fmt::format("trace tracks: {} events on {} tracks", trace["traceEvents"].size(), tracks.size()));
  // Shard bytes: (parameters + padding) / world, in the compute dtype.
  const auto& layout = eng->store().layout();
  const std::uint64_t want = (static_cast<std::uint64_t>(cfg.parameter_count()) + layout.padding_elems) * 4 / g_comm->world();
  if (eng->shard_bytes() != want) fail(fmt::format("shard bytes {} != {}", eng->shard_bytes(), want));
  if (layout.used_elems != static_cast<std::uint64_t>(cfg.parameter_count())) fail("layout does not hold every parameter");
}

// Trains a 16-in, 4-out model through `eng` on this rank's 4 rows and its reference in
// one process on the whole batch, with plain LibTorch; after every step the consolidated
// parameters must agree, and from step `scheduled_from` the schedule must drive it.
using ForwardFn = std::function<at::Tensor(const at::Tensor& x, int step)>;
void train_like_reference(engine::Engine& eng, const ForwardFn& live, const ForwardFn& plain,
                          torch::optim::Optimizer& ref_opt, const std::vector<at::Tensor>& ref_params, int steps,
                          std::uint64_t seed, int scheduled_from) {
  for (int s = 0; s < steps; ++s) {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed + static_cast<std::uint64_t>(s));
    at::Tensor x = at::randn({4 * g_comm->world(), 16}, g), y = at::randn({4 * g_comm->world(), 4}, g);
    at::Tensor mx = x.narrow(0, 4 * g_comm->rank(), 4), my = y.narrow(0, 4 * g_comm->rank(), 4);
    check(eng.backward(at::mse_loss(live(mx, s), my)), "backward");
    check(eng.step(), "step");
    ref_opt.zero_grad();
    at::mse_loss(plain(x, s), y).backward();
    ref_opt.step();
    auto got = check(eng.consolidated_params(), "consolidated");
    for (std::size_t i = 0; i < got.size(); ++i)
      if (const double e = rel_error(got[i], ref_params[i]); e > 1e-5)
        fail(fmt::format("step {}: param {} differs, relative error {:.3g}", s, i, e));
    if (s >= scheduled_from && !eng.last_metrics().scheduled) fail(fmt::format("step {} was not driven by the schedule", s));
  }
}

// Small models of a few units: SGD with momentum, chunks of 512 elements.
engine::EngineOptions small_unit_options() {
  engine::EngineOptions o;
  // SGD, as in parity(): Adam turns gradients that are rounding noise into full steps.
  o.optimizer.type = OptimizerType::kSGD;
  o.optimizer.lr = 0.05;
  o.optimizer.momentum = 0.9;
  o.chunks.chunk_size_elems = 512;
  o.chunks.io_align_bytes = 64;
  o.schedule.prefetch_bucket_bytes = 1 << 20;
  return o;
}

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

// An inner unit called from inside an outer unit, both sharded.
struct Inner : torch::nn::Module {
  torch::nn::Linear lin{nullptr};
  Inner() { lin = register_module("lin", torch::nn::Linear(32, 32)); }
  at::Tensor forward(const at::Tensor& x) { return at::tanh(lin->forward(x)); }
};
struct Outer : torch::nn::Module {
  torch::nn::Linear in{nullptr}, out{nullptr};
  std::shared_ptr<Inner> inner;
  Outer() {
    in = register_module("in", torch::nn::Linear(16, 32));
    inner = register_module("inner", std::make_shared<Inner>());
    out = register_module("out", torch::nn::Linear(32, 32));
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = at::tanh(in->forward(x));
    h = engine::forward(inner, h);  // nested unit
    return out->forward(h);         // the outer unit's own parameters, after the inner one
  }
};
struct Nested : torch::nn::Module {
  std::shared_ptr<Outer> outer;
  torch::nn::Linear head{nullptr};
  Nested() {
    outer = register_module("outer", std::make_shared<Outer>());
    head = register_module("head", torch::nn::Linear(32, 4));
  }
  at::Tensor forward(const at::Tensor& x) { return engine::forward(head, engine::forward(outer, x)); }
};

void nested() {
  at::manual_seed(5);
  auto model = std::make_shared<Nested>();
  at::manual_seed(5);
  auto ref = std::make_shared<Nested>();
  engine::EngineOptions o = small_unit_options();
  o.schedule.max_reuse_distance_elems = 0;  // release after every use: nesting must hold them
  std::vector<engine::ModuleUnit> units = {{.module = model->outer, .name = "outer"},
                                         {.module = model->outer->inner, .name = "inner"},
                                         {.module = model->head.ptr(), .name = "head"}};
  auto eng = check(engine::shard(*model, *g_comm, o, units), "shard");
  torch::optim::SGD ref_opt(ref->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  train_like_reference(
      *eng, [&](const at::Tensor& x, int) { return model->forward(x); },
      [&](const at::Tensor& x, int) { return ref->forward(x); }, ref_opt, ref->parameters(), 8, 90, /*scheduled_from=*/2);
}

void overbudget() {
  const nn::GPTConfig cfg = model_config();
  nn::GPT model(cfg);
  std::uint64_t model_bytes = 0;
  engine::EngineOptions o = options("quarter", cfg, &model_bytes);
  o.schedule.budget_bytes[0] = 16 << 10;  // smaller than one chunk
  auto eng = engine::shard(*model, *g_comm, o);
  if (eng) fail("an impossible compute budget was accepted");
  strata::testing::expected_failure(eng.error());
}


// The awkward model (awkward_model.h) against plain LibTorch at one stage and placement:
// losses per step, the consolidated parameters, the frozen weight bit for bit, and the
// loss of the live sharded model against a plain model loaded with the consolidated
// parameters. Placements: none, optim_cpu, optim_nvme, params_host, params_nvme (stage 3:
// parameter shards and optimizer state there), budget (a compute budget; at stage 3 it
// forces evictions).
void awkward_case(int stage, const std::string& placement) {
  using strata::testing::AwkwardModel;
  const std::string what = fmt::format("stage {} {}", stage, placement);
  auto model = std::make_shared<AwkwardModel>(21);
  AwkwardModel ref(21);
  const at::Tensor frozen_before = model->frozen->weight.detach().clone();
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
  } else if (placement == "budget") {
    o.optim_device = OffloadDevice::kCpu;
    if (stage == 3) {
      // Small chunks and a budget under the whole model: chunks are evicted and gathered
      // again within a step.
      o.param_device = OffloadDevice::kCpu;
      o.chunks.chunk_size_elems = 512;
      o.schedule.budget_bytes[0] = model_bytes * 5 / 4;
    } else {
      o.schedule.budget_bytes[0] = model_bytes * 5 / 2;  // whole parameters, gradients, in-flight buffers
    }
  } else if (placement != "none") {
    fail("unknown placement " + placement);
  }
  auto made = engine::shard(*model, *g_comm, o);
  if (stage < 3 && (placement == "params_host" || placement == "params_nvme")) {
    // Parameters are only sharded, so only offloaded, at stage 3.
    if (made || made.error().code() != ErrorCode::kInvalidArgument || made.error().message().find("stage 3") == std::string::npos)
      fail(what + ": offloading parameters should be refused, got " + (made ? "an engine" : made.error().to_string()));
    return;
  }
  auto eng = check(std::move(made), "shard");
  std::vector<at::Tensor> ref_params;
  for (auto& p : ref.parameters())
    if (p.requires_grad()) ref_params.push_back(p);
  torch::optim::SGD ref_opt(ref_params, torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(0.01));
  const std::int64_t rows = 4;
  std::uint64_t gathers = 0;
  for (int s = 0; s < 8; ++s) {
    auto [x, y] = strata::testing::awkward_batch(s, rows * g_comm->world());
    at::Tensor loss = model->loss(x.narrow(0, rows * g_comm->rank(), rows), y.narrow(0, rows * g_comm->rank(), rows));
    check(eng->backward(loss), "backward");
    check(eng->step(), "step");
    gathers = eng->last_metrics().gathers;
    ref_opt.zero_grad();
    at::Tensor ref_loss = ref.loss(x, y);
    ref_loss.backward();
    ref_opt.step();
    at::Tensor l = loss.detach().clone();
    check(g_comm->all_reduce(l, comm::ReduceOp::kAvg).wait(), "loss avg");
    if (std::abs(l.item<double>() - ref_loss.item<double>()) > 1e-5 * std::abs(ref_loss.item<double>()))
      fail(fmt::format("{} step {}: loss {} vs reference {}", what, s, l.item<double>(), ref_loss.item<double>()));
  }
  const std::size_t n_chunks = eng->store().num_chunks();
  if (stage == 3 && placement == "budget" && gathers <= n_chunks)
    fail(fmt::format("{}: {} gathers in a step over {} chunks: the budget forced no eviction", what, gathers, n_chunks));
  auto got = check(eng->consolidated_params(), "consolidated_params");
  auto named = ref.named_parameters();
  AwkwardModel plain(99);
  auto plain_named = plain.named_parameters();
  at::NoGradGuard no_grad;
  for (const auto& item : model->named_parameters()) {
    auto it = std::find_if(eng->params().begin(), eng->params().end(), [&](const at::Tensor& p) { return p.is_same(item.value()); });
    const at::Tensor& value = got.at(static_cast<std::size_t>(it - eng->params().begin()));
    if (rel_error(value, named[item.key()]) > 1e-5) fail(fmt::format("{}: parameter {} differs from the reference", what, item.key()));
    if (item.key() == "frozen.weight" && !at::equal(value, frozen_before)) fail(what + ": the frozen weight changed");
    plain_named[item.key()].copy_(value);
  }
  // The live sharded model and a plain model with the consolidated weights compute the
  // same loss on a fresh batch.
  auto [x, y] = strata::testing::awkward_batch(100, 8);
  const double live = model->loss(x, y).item<double>(), cons = plain.loss(x, y).item<double>();
  if (std::abs(live - cons) > 1e-6 * std::abs(cons))
    fail(fmt::format("{}: live model loss {} but consolidated weights give {}", what, live, cons));
}

void awkward(int stage) {
  for (const char* p : {"none", "optim_cpu", "optim_nvme", "params_host", "params_nvme", "budget"}) awkward_case(stage, p);
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

// Stage 2 holds 1/world of the gradients (fp32 shards) plus the full-size buffers in
// flight, at most reduce_bucket_size elements beyond one chunk; stage 0 all of them.
void gradmem() {
  const nn::GPTConfig cfg = model_config();
  std::uint64_t peak[3] = {0, 0, 0};
  const std::uint64_t bucket_elems = 2 * 8192;
  for (int stage : {0, 2}) {
    nn::GPT model(cfg);
    model->init_weights(11);
    engine::EngineOptions o;
    o.stage = stage;
    o.optimizer.type = OptimizerType::kSGD;
    o.chunks.chunk_size_elems = 8192;
    o.chunks.io_align_bytes = 64;
    o.reduce_bucket_size = bucket_elems;
    auto eng = check(engine::shard(*model, *g_comm, o), "shard");
    for (int s = 0; s < 3; ++s) {
      auto [x, y] = my_rows(s);
      check(eng->backward(model->loss(x, y)), "backward");
      check(eng->step(), "step");
      peak[stage] = std::max(peak[stage], eng->last_metrics().peak_grad_bytes);
    }
  }
  const std::uint64_t bound = peak[0] / g_comm->world() + bucket_elems * 4;
  fmt::print("rank {}: gradient bytes stage 0 {}, stage 2 {}, bound {}\n", g_comm->rank(), peak[0], peak[2], bound);
  if (peak[2] > bound) fail(fmt::format("stage 2 held {} gradient bytes, more than stage 0's {} / {} + one bucket", peak[2], peak[0], g_comm->world()));
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

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> a(argv + 1, argv + argc);
  if (a.empty()) fail("usage: zero3_worker MODE ...");
  auto comm = check(comm::init_from_env(), "init");
  g_comm = comm.get();
  strata::testing::worker_comm() = g_comm;
  const std::string& mode = a[0];
  if (mode == "parity") parity(a.at(1), a.size() > 2 && a[2] == "bf16");
  else if (mode == "memory") memory();
  else if (mode == "branch") branch();
  else if (mode == "overbudget") overbudget();
  else if (mode == "diverge") diverge();
  else if (mode == "nested") nested();
  else if (mode == "awkward") awkward(std::stoi(a.at(1)));
  else if (mode == "tuple") tuple_outputs();
  else if (mode == "gradmem") gradmem();
  else if (mode == "bwdbudget") backward_budget();
  else fail("unknown mode " + mode);
  fmt::print("OK\n");
  return 0;
}
