// One rank of the engine's tests on the GPT model (tests/engine/zero3_test.cpp starts N
// of these; the small unit models are in units_worker.cpp). Each
// rank also trains the reference — the same model, unsharded, plain torch::optim, on
// the whole job's batch — and compares. "OK" and exit 0 on success, 1 on a mismatch,
// 3 on an expected failure.
//
// zero3_worker parity PLACEMENT [bf16]   PLACEMENT: compute | host | optim-host | quarter |
//                                        auto | nvme | nvme-split | nvme-optim-split |
//                                        persist | searched, each with an
//                                        optional -tensor-ops (ATen ops step the state)
// zero3_worker memory                     max_live bound and shard bytes
// zero3_worker overbudget                 a compute budget that cannot fit fails at setup
// zero3_worker gradmem                    stage 2 holds 1/world of stage 0's gradient bytes
// zero3_worker deferred STAGE              deferred construction equals eager, bit for bit
// zero3_worker fp16                       an overflowing loss scale skips the step
// zero3_worker bf16grads PLACEMENT       bf16 gradient shards train bit for bit as fp32 ones
//
// STRATA_TEST_DEVICE (default cpu) is where the model, its reference and the batches
// live: `cuda` for the gpu-labelled tests, which compare against plain LibTorch on the
// same GPU.
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include "strata/base/fatal_signal.h"
#include "strata/comm/torch_compat.h"
#include "strata/base/units.h"
#include "strata/comm/rendezvous.h"
#include "strata/engine/deferred_init.h"
#include "strata/engine/engine.h"
#include "strata/engine/module_hooks.h"
#include "strata/nn/models/gpt.h"
#include "strata/tiers/host_heap.h"
#include "support/multirank.h"
#include "support/worker.h"
#include "toy_model.h"

using namespace strata;
using strata::testing::rel_error;

namespace {

comm::Communicator* g_comm = nullptr;
using strata::testing::check;
using strata::testing::test_device;
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

engine::EngineOptions options(std::string placement, const nn::GPTConfig& cfg, std::uint64_t* model_bytes) {
  engine::EngineOptions o;
  // Note [gradients kept on compute]: the gradient shards stay in compute memory.
  o.gradient_shards_on_compute = strata::testing::take_suffix(placement, "-grads-on-compute");
  if (strata::testing::take_suffix(placement, "-tensor-ops"))  // ATen ops step the state (host_step)
    o.host_step = engine::EngineOptions::StepKernels::kTensorOps;
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
  } else if (placement == "optim-host") {
    // Parameter shards stay on compute (on a GPU: GPU memory), the optimizer state on
    // host: the step writes a host staging shard that goes home to compute.
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
  } else if (placement == "nvme" || placement == "nvme-split" || placement == "nvme-optim-split") {
    o.param_device = OffloadDevice::kNvme;
    o.optim_device = OffloadDevice::kNvme;
    o.swap.nvme_path = std::getenv("STRATA_TEST_NVME");
    o.swap.job_name = "zero3test";
    o.swap.min_io_bytes = 0;  // every record on disk, however small
    // strata.optimizer_max_in_cpu: the first chunks' state on host (two chunks' shards
    // at world 2), the rest on nvme with the parameter shards.
    if (placement == "nvme-optim-split") o.optim_max_in_cpu = 8192;
    if (placement == "nvme-split") {
      // Sub-groups of 1024 elements (4 per shard at world 2), read ahead 4 deep; one
      // Load staging buffer, so most gathers read their shard themselves; the first
      // chunk shards kept on host by max_in_cpu (one at world 1, two at world 2).
      o.optim_pipeline.sub_group_elems = 1024;
      o.optim_pipeline.buffer_count = 6;
      o.param_staging.buffer_count = 1;
      o.param_staging.max_in_cpu = 8192;
    }
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
  return (a.to(at::kDouble) - b.to(a.device(), at::kDouble)).abs().max().item<double>() / scale;
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
  // The checks of a placement hold with its gradient shards kept on compute too.
  std::string base = placement;
  strata::testing::take_suffix(base, "-grads-on-compute");
  const nn::GPTConfig cfg = model_config();
  const c10::Device dev = test_device();
  nn::GPT model(cfg), ref(cfg);
  model->init_weights(11);
  ref->init_weights(11);
  model->to(dev);
  ref->to(dev);
  std::uint64_t model_bytes = 0;
  engine::EngineOptions o = options(placement, cfg, &model_bytes);
  if (bf16) o.compute_dtype = at::kBFloat16;
  if (bf16) {
    o.optimizer.type = OptimizerType::kAdamW;
    o.optimizer.lr = 3e-3;
  }
  auto eng = check(engine::shard(*model, *g_comm, o), "shard");
  if (base == "host" || base == "quarter") {
    // Note [shard from master]: with shards and state on host no shard is stored.
    const auto held = eng->memory_by_kind()[plan::tier_index(plan::Tier::kHost)][plan::kind_index(plan::StateKind::kParams)];
    if (held != 0) fail(fmt::format("{}: {} bytes of parameter shards held on host; the masters make them", placement, held));
  }
  if (placement == "nvme-split") {
    // max_in_cpu: some parameter shard bytes on host, the rest on nvme.
    const auto by_kind = eng->memory_by_kind();
    const auto params = plan::kind_index(plan::StateKind::kParams);
    if (by_kind[plan::tier_index(plan::Tier::kHost)][params] == 0 || by_kind[plan::tier_index(plan::Tier::kNvme)][params] == 0)
      fail("max_in_cpu: expected parameter shards both on host and on nvme");
  }
  if (o.gradient_shards_on_compute) strata::testing::expect_grads_kept_on_compute(eng->memory_by_kind());
  if (placement.starts_with("nvme-optim-split")) {
    const auto by_kind = eng->memory_by_kind();
    const auto optim = plan::kind_index(plan::StateKind::kOptimizer);
    if (by_kind[plan::tier_index(plan::Tier::kHost)][optim] == 0 || by_kind[plan::tier_index(plan::Tier::kNvme)][optim] == 0)
      fail("optimizer_max_in_cpu: expected optimizer state both on host and on nvme");
  }
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
    at::Tensor loss = model->loss(x.to(dev), y.to(dev));
    check(eng->backward(loss), "backward");
    check(eng->step(), "step");
    auto [fx, fy] = batch(s, kBatchPerRank * g_comm->world());
    torch_compat::zero_grad_keep(*ref_opt);
    at::Tensor ref_loss = ref->loss(fx.to(dev), fy.to(dev));
    ref_loss.backward();
    ref_opt->step();
    at::Tensor l = loss.detach().to(at::kCPU, at::kFloat).clone();
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
  if ((base == "host" || base == "quarter") && m.moved.host_compute() != m.planned.host_compute()) {
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
  std::uint64_t trims_after_first = 0;
  for (int s = 0; s < 6; ++s) {
    if (s == 3) eng->trace_next_step(trace_path);
    auto [x, y] = my_rows(s);
    check(eng->backward(model->loss(x, y)), "backward");
    check(eng->step(), "step");
    if (s == 0) trims_after_first = tiers::heap_trims();
    const auto& m = eng->last_metrics();
    if (m.peak_gathered_bytes > o.schedule.max_live_bytes + chunk_bytes) {
      fail(fmt::format("step {}: gathered peak {} > max_live {} + one chunk", s, m.peak_gathered_bytes, o.schedule.max_live_bytes));
    }
  }
  // Note [host heap]: steps that free the same bytes do not hand them back to the
  // system, or the next step would fault them in again.
  if (tiers::heap_trims() != trims_after_first) {
    fail(fmt::format("{} heap trims after steps 2-6", tiers::heap_trims() - trims_after_first));
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



// Stage 2 holds 1/world of the gradients (fp32 shards) plus the full-size buffers in
// flight, at most reduce_bucket_size elements beyond one chunk, and the first chunk
// (the tied embedding: its gradients come at the start of backward, from the head, and
// at the end), which with more than one rank waits through backward for its turn in the
// fixed order of reductions (Note [reductions in one order]); stage 0 all of them.
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
  const std::uint64_t bound = peak[0] / g_comm->world() + bucket_elems * 4 + 8192 * 4;
  fmt::print("rank {}: gradient bytes stage 0 {}, stage 2 {}, bound {}\n", g_comm->rank(), peak[0], peak[2], bound);
  if (peak[2] > bound) fail(fmt::format("stage 2 held {} gradient bytes, more than stage 0's {} / {} + one bucket + one chunk", peak[2], peak[0], g_comm->world()));
}

// A model built deferred (no parameter bytes until the engine makes them, chunk by
// chunk) equals one built eagerly with the same seed, bit for bit: the consolidated
// weights after setup, every loss of five steps, the weights after them. Stage 3 puts
// parameters and optimizer state on nvme, stages 1-2 the optimizer state; one frozen
// parameter covers the stages 0-2 path that leaves frozen parameters outside the store.
void deferred(int stage) {
  const nn::GPTConfig cfg = model_config();
  std::uint64_t model_bytes = 0;
  engine::EngineOptions o = options(stage == 3 ? "nvme" : "compute", cfg, &model_bytes);
  o.stage = stage;
  if (stage == 1 || stage == 2) {
    o.optim_device = OffloadDevice::kNvme;
    o.swap.nvme_path = std::getenv("STRATA_TEST_NVME");
    o.swap.min_io_bytes = 0;
  }
  nn::GPT eager(cfg), lazy(cfg, /*deferred=*/true);
  eager->init_weights(11);
  for (const at::Tensor& p : lazy->parameters()) {
    if (!engine::is_deferred(p)) fail("a parameter of the deferred model has bytes");
  }
  for (nn::GPT* m : {&eager, &lazy}) (*m)->head->ln_f->bias.requires_grad_(false);
  o.swap.job_name = "eager";
  auto a = check(engine::shard(*eager, *g_comm, o), "shard eager");
  o.swap.job_name = "deferred";
  auto b = check(engine::shard(*lazy, *g_comm, o, {}, lazy->initializer(11)), "shard deferred");
  auto same = [&](const std::string& when) {
    auto x = check(a->consolidated_params(), "consolidated eager");
    auto y = check(b->consolidated_params(), "consolidated deferred");
    if (x.size() != y.size()) fail("parameter counts differ");
    for (std::size_t i = 0; i < x.size(); ++i)
      if (!at::equal(x[i], y[i])) fail(fmt::format("{}: parameter {} differs", when, i));
  };
  same("after setup");
  for (int s = 0; s < 5; ++s) {
    auto [x, y] = my_rows(s);
    at::Tensor la = eager->loss(x, y), lb = lazy->loss(x, y);
    if (!at::equal(la, lb)) fail(fmt::format("step {}: loss {} vs {}", s, la.item<double>(), lb.item<double>()));
    check(a->backward(la), "backward eager");
    check(b->backward(lb), "backward deferred");
    check(a->step(), "step eager");
    check(b->step(), "step deferred");
  }
  same("after 5 steps");
}

// strata.gradient_shard_dtype bf16 loses nothing where nothing can be lost: bf16 compute,
// one micro-step a step: each reduced gradient is bf16 already, so an engine with bf16
// gradient shards trains bit for bit as one with fp32 shards (every loss of five steps,
// the weights after them) while its shards take half the bytes on host and nvme.
void bf16_grads(const std::string& placement) {
  const nn::GPTConfig cfg = model_config();
  std::uint64_t model_bytes = 0;
  engine::EngineOptions o = options(placement, cfg, &model_bytes);
  o.compute_dtype = at::kBFloat16;
  o.optimizer.type = OptimizerType::kAdamW;
  o.optimizer.lr = 3e-3;
  o.optim_state_dtype = at::kBFloat16;  // as `strata bench zero3 --largest` runs
  const c10::Device dev = test_device();
  nn::GPT fp32_model(cfg), bf16_model(cfg);
  fp32_model->init_weights(11);
  bf16_model->init_weights(11);
  fp32_model->to(dev);
  bf16_model->to(dev);
  o.swap.job_name = "fp32-grads";
  auto a = check(engine::shard(*fp32_model, *g_comm, o), "shard fp32 grads");
  o.grad_shard_dtype = at::kBFloat16;
  o.swap.job_name = "bf16-grads";
  auto b = check(engine::shard(*bf16_model, *g_comm, o), "shard bf16 grads");
  const auto grads = plan::kind_index(plan::StateKind::kGrads);
  std::uint64_t off_compute = 0;
  for (plan::Tier t : {plan::Tier::kHost, plan::Tier::kNvme}) {
    const std::uint64_t fp32 = a->memory_by_kind()[plan::tier_index(t)][grads];
    const std::uint64_t bf16 = b->memory_by_kind()[plan::tier_index(t)][grads];
    if (bf16 * 2 != fp32) fail(fmt::format("tier {}: bf16 gradient shards hold {} bytes, fp32 ones {}", plan::tier_index(t), bf16, fp32));
    off_compute += fp32;
  }
  if (off_compute == 0) fail(placement + ": no gradient shard off the compute tier");
  for (int s = 0; s < 5; ++s) {
    auto [x, y] = my_rows(s);
    at::Tensor la = fp32_model->loss(x.to(dev), y.to(dev)), lb = bf16_model->loss(x.to(dev), y.to(dev));
    if (!at::equal(la, lb)) fail(fmt::format("step {}: loss {} vs {}", s, la.item<double>(), lb.item<double>()));
    check(a->backward(la), "backward fp32 grads");
    check(b->backward(lb), "backward bf16 grads");
    check(a->step(), "step fp32 grads");
    check(b->step(), "step bf16 grads");
  }
  auto x = check(a->consolidated_params(), "consolidated fp32 grads");
  auto y = check(b->consolidated_params(), "consolidated bf16 grads");
  for (std::size_t i = 0; i < x.size(); ++i)
    if (!at::equal(x[i], y[i])) fail(fmt::format("after 5 steps: parameter {} differs", i));
}

// fp16 with dynamic loss scaling (only on a GPU: LibTorch 1.13 has no fp16 matrix
// products on the CPU). A first scale of 2^32 overflows the fp16 gradients, so the first
// steps are skipped on every rank with the parameters untouched and the scale halved
// each time (hysteresis 1); once the scale fits, steps apply and the loss falls.
void fp16() {
  const nn::GPTConfig cfg = model_config();
  const c10::Device dev = test_device();
  nn::GPT model(cfg);
  model->init_weights(11);
  model->to(dev);
  std::uint64_t model_bytes = 0;
  engine::EngineOptions o = options("host", cfg, &model_bytes);
  o.compute_dtype = at::kHalf;
  o.fp16.enabled = true;
  o.fp16.loss_scale = 0;  // dynamic
  o.fp16.initial_scale_power = 32;
  o.fp16.hysteresis = 1;
  o.optimizer.type = OptimizerType::kAdamW;
  o.optimizer.lr = 3e-3;
  auto eng = check(engine::shard(*model, *g_comm, o), "shard");
  const std::vector<at::Tensor> before = check(eng->consolidated_params(), "params before");
  int skipped = 0, applied = 0;
  double first_loss = 0, last_loss = 0, scale = 0;
  for (int s = 0; s < 60; ++s) {
    auto [x, y] = my_rows(s % 4);  // four batches again and again: the loss can fall
    at::Tensor loss = model->loss(x.to(dev), y.to(dev));
    const double l = loss.item<double>();
    if (!std::isfinite(l)) fail(fmt::format("step {}: the unscaled loss is {}", s, l));
    if (s == 0) first_loss = l;
    last_loss = l;
    check(eng->backward(loss), "backward");
    const engine::StepResult r = check(eng->step(), "step");
    if (r.applied) {
      ++applied;
      continue;
    }
    if (applied > 0) continue;  // a late overflow is legitimate: dynamic scaling probes upward
    ++skipped;
    if (scale != 0 && r.loss_scale != scale / 2) {
      fail(fmt::format("step {}: the scale went {} -> {}, not halved after an overflow", s, scale, r.loss_scale));
    }
    scale = r.loss_scale;
    const std::vector<at::Tensor> now = check(eng->consolidated_params(), "params after a skipped step");
    for (std::size_t i = 0; i < now.size(); ++i)
      if (!at::equal(now[i], before[i])) fail(fmt::format("step {} was skipped but parameter {} changed", s, i));
  }
  fmt::print("fp16: {} steps skipped (scale 2^32 down to {}), {} applied, loss {:.4f} -> {:.4f}\n", skipped, scale,
             applied, first_loss, last_loss);
  if (skipped == 0) fail("a loss scale of 2^32 did not overflow the fp16 gradients");
  if (applied < 20) fail(fmt::format("only {} of 60 steps applied", applied));
  if (!(last_loss < first_loss - 0.1)) fail(fmt::format("the loss did not fall: {} -> {}", first_loss, last_loss));
}

// offload_param.buffer_size below the largest nvme shard is refused at setup, naming
// the key.
void small_param_buffers() {
  const nn::GPTConfig cfg = model_config();
  nn::GPT model(cfg);
  std::uint64_t model_bytes = 0;
  engine::EngineOptions o = options("nvme", cfg, &model_bytes);
  o.param_staging.buffer_elems = 100;
  auto eng = engine::shard(*model, *g_comm, o);
  if (eng) fail("a 100-element offload_param.buffer_size was accepted");
  const std::string e = eng.error().to_string();
  if (e.find("zero_optimization.offload_param.buffer_size 100") == std::string::npos) fail("the key is not named: " + e);
}

}  // namespace

int main(int argc, char** argv) {
  strata::install_fatal_signal_report("zero3_worker");  // Note [fatal signal report]
  std::vector<std::string> a(argv + 1, argv + argc);
  if (a.empty()) fail("usage: zero3_worker MODE ...");
  auto comm = check(comm::init_from_env(), "init");
  g_comm = comm.get();
  strata::testing::worker_comm() = g_comm;
  const std::string& mode = a[0];
  if (mode == "parity") parity(a.at(1), a.size() > 2 && a[2] == "bf16");
  else if (mode == "memory") memory();
  else if (mode == "overbudget") overbudget();
  else if (mode == "gradmem") gradmem();
  else if (mode == "deferred") deferred(std::stoi(a.at(1)));
  else if (mode == "smallbuffers") small_param_buffers();
  else if (mode == "fp16") fp16();
  else if (mode == "bf16grads") bf16_grads(a.at(1));
  else fail("unknown mode " + mode);
  fmt::print("OK\n");
  return 0;
}
