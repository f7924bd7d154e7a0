// One rank of the checkpoint tests (tests/ckpt/checkpoint_test.cpp starts N of these),
// on the awkward model (frozen weight, a parameter without a gradient, a module called
// twice on a skip branch, a tuple output). "OK" and exit 0 on success, 1 on a mismatch,
// 3 on an expected failure (its message printed).
//
// ckpt_worker save DIR LAYOUT STEPS        train STEPS steps, save DIR/step-STEPS
// ckpt_worker load DIR LAYOUT STEPS        load it, train STEPS more; against AdamW run
//                                          2*STEPS steps uninterrupted in this process
// ckpt_worker load-bad DIR LAYOUT          loading must fail: the error is printed
// ckpt_worker load-other DIR               into a model with other names and shapes: must fail
// ckpt_worker kill DIR LAYOUT POINT RANK   save step-2; then step-3, SIGKILL on rank RANK
//                                          at POINT of the save (the others must fail)
// ckpt_worker resave DIR                   step-3 saved twice: the second replaces the first
//                                          (the second through Engine::save_checkpoint)
// ckpt_worker buffers DIR                 the caller's buffers saved, resharded and loaded
//                                          (SaveOptions::buffers); then another model's refused
// ckpt_worker one-shard DIR               a model within rank 0's shard: saved, loaded, trains on
// ckpt_worker check DIR STEP               the latest checkpoint loads (Engine::load_checkpoint)
//                                          and is step STEP
// ckpt_worker eio DIR                      save step-2; an EIO in the last rank's step-3 file
// ckpt_worker nospace DIR LAYOUT           save step-2; fill the disk; the step-3 save
//                                          fails with the no-space error, step-2 intact
//
// LAYOUT is STAGE:DEVICE:CHUNK, e.g. 3:nvme:2048 (DEVICE host or nvme: the optimizer
// state there, and at stage 3 the parameter shards too; stage 0 offloads nothing;
// CHUNK elements per chunk).
#include <signal.h>

#include <cerrno>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adamw.h>
#include <torch/utils.h>

#include "awkward_model.h"
#include "strata/base/fatal_signal.h"
#include "strata/comm/torch_compat.h"
#include "strata/ckpt/checkpoint.h"
#include "strata/ckpt/tools.h"
#include "strata/comm/rendezvous.h"
#include "strata/engine/engine.h"
#include "strata/engine/module_hooks.h"
#include "strata/io/fault_injection.h"
#include "support/worker.h"
#include "toy_model.h"

using namespace strata;
using strata::testing::AwkwardModel;
using strata::testing::check;
using strata::testing::fail;
using strata::testing::rel_error;
namespace fs = std::filesystem;

namespace {

comm::Communicator* g_comm = nullptr;
constexpr std::int64_t kRows = 12;  // per step, the whole job: 12 divides among 1-4 ranks
constexpr std::uint64_t kSeed = 21;

struct Layout {
  int stage = 3;
  std::string device = "host";
  std::int64_t chunk = 2048;
};

Layout parse_layout(const std::string& s) {
  const auto a = s.find(':'), b = s.find(':', a + 1);
  if (a == std::string::npos || b == std::string::npos) fail("layout " + s + ": expected STAGE:DEVICE:CHUNK");
  return {std::stoi(s.substr(0, a)), s.substr(a + 1, b - a - 1), std::stoll(s.substr(b + 1))};
}

engine::EngineOptions options(const Layout& l, const std::string& job) {
  engine::EngineOptions o;
  o.stage = l.stage;
  o.optimizer.type = OptimizerType::kAdamW;
  o.optimizer.lr = 1e-2;
  o.optimizer.weight_decay = 0.01;
  o.chunks.chunk_size_elems = static_cast<std::uint64_t>(l.chunk);
  o.chunks.io_align_bytes = 64;
  o.optimizer_threads = 1;
  o.schedule.persistence_threshold_elems = 0;
  const OffloadDevice d = l.device == "nvme" ? OffloadDevice::kNvme : OffloadDevice::kCpu;
  if (l.stage > 0) o.optim_device = d;  // stage 0 offloads nothing: "host" is the compute tier
  if (l.stage == 3) o.param_device = d;
  if (d == OffloadDevice::kNvme) {
    o.swap.nvme_path = std::getenv("STRATA_TEST_NVME");
    o.swap.job_name = job;
    o.swap.min_io_bytes = 0;
  }
  return o;
}

// The engine's batch rows for step s, and the loss (mean over the job).
double train_step(engine::Engine& eng, AwkwardModel& model, std::int64_t s) {
  const std::int64_t per = kRows / g_comm->world();
  auto [x, y] = strata::testing::awkward_batch(s, kRows);
  at::Tensor loss = model.loss(x.narrow(0, per * g_comm->rank(), per), y.narrow(0, per * g_comm->rank(), per));
  check(eng.backward(loss), "backward");
  check(eng.step(), "step");
  at::Tensor l = loss.detach().clone();
  check(g_comm->all_reduce(l, comm::ReduceOp::kAvg).wait(), "loss avg");
  return l.item<double>();
}

struct Reference {
  AwkwardModel model{kSeed};
  std::unique_ptr<torch::optim::AdamW> opt;
  Reference() {
    std::vector<at::Tensor> ps;
    for (auto& p : model.parameters())
      if (p.requires_grad()) ps.push_back(p);
    opt = std::make_unique<torch::optim::AdamW>(ps, torch::optim::AdamWOptions(1e-2).weight_decay(0.01));
  }
  double step(std::int64_t s) {
    auto [x, y] = strata::testing::awkward_batch(s, kRows);
    torch_compat::zero_grad_keep(*opt);
    at::Tensor loss = model.loss(x, y);
    loss.backward();
    opt->step();
    return loss.item<double>();
  }
};

void train(engine::Engine& eng, AwkwardModel& model, std::int64_t from, std::int64_t to) {
  for (std::int64_t s = from; s < to; ++s) train_step(eng, model, s);
}

ckpt::SaveOptions save_options(const std::string& dir, std::int64_t step) {
  return {.root = dir, .step = step, .keep = 0, .config = {{"layout", "test"}}, .client = {{"next_step", step}}};
}

void save(const std::string& dir, const Layout& l, std::int64_t steps) {
  auto model = std::make_shared<AwkwardModel>(kSeed);
  auto eng = check(engine::shard(*model, *g_comm, options(l, "save")), "shard");
  train(*eng, *model, 0, steps);
  check(ckpt::save_checkpoint(*eng, save_options(dir, steps)), "save");
}

void load(const std::string& dir, const Layout& l, std::int64_t steps) {
  // A different seed: every value must come from the checkpoint.
  auto model = std::make_shared<AwkwardModel>(kSeed + 1);
  auto eng = check(engine::shard(*model, *g_comm, options(l, "load")), "shard");
  auto loaded = check(ckpt::load_checkpoint(*eng, dir), "load");
  if (eng->steps() != steps || loaded.meta.client.value("next_step", -1) != steps)
    fail(fmt::format("loaded step {} (client {}), expected {}", eng->steps(), loaded.meta.client.dump(), steps));
  Reference ref;
  for (std::int64_t s = 0; s < steps; ++s) ref.step(s);
  for (std::int64_t s = steps; s < 2 * steps; ++s) {
    const double got = train_step(*eng, *model, s), want = ref.step(s);
    if (std::abs(got - want) > 1e-5 * std::abs(want)) fail(fmt::format("step {}: loss {} vs uninterrupted {}", s, got, want));
  }
  // The live sharded model's consolidated weights against the reference's, by name.
  auto got = check(eng->consolidated_params(), "consolidated_params");
  auto want = ref.model.named_parameters();
  for (std::size_t i = 0; i < got.size(); ++i) {
    const std::string& name = eng->param_names()[i];
    if (const double e = rel_error(got[i], want[name]); e > 1e-5)
      fail(fmt::format("{}: relative error {:.3g} after resuming", name, e));
  }
}

void load_bad(const std::string& dir, const Layout& l) {
  auto model = std::make_shared<AwkwardModel>(kSeed);
  auto eng = check(engine::shard(*model, *g_comm, options(l, "bad")), "shard");
  auto r = ckpt::load_checkpoint(*eng, dir);
  if (r) fail("a damaged checkpoint loaded");
  strata::testing::expected_failure(r.error());
}

// A model with other names and shapes: the error lists what differs.
struct OtherModel : torch::nn::Module {
  torch::nn::Linear in{nullptr}, extra{nullptr};
  OtherModel() {
    in = register_module("in", torch::nn::Linear(16, 48));  // in.weight is [32, 16] in the awkward model
    extra = register_module("extra", torch::nn::Linear(4, 4));
  }
  at::Tensor forward(const at::Tensor& x) { return engine::forward(extra, engine::forward(in, x).narrow(1, 0, 4)); }
};

void load_other(const std::string& dir) {
  auto model = std::make_shared<OtherModel>();
  auto eng = check(engine::shard(*model, *g_comm, options({3, "host", 2048}, "other")), "shard");
  auto r = ckpt::load_checkpoint(*eng, dir);
  if (r) fail("a checkpoint of another model loaded");
  strata::testing::expected_failure(r.error());
}

void kill_at(const std::string& dir, const Layout& l, const std::string& point, int victim) {
  auto model = std::make_shared<AwkwardModel>(kSeed);
  auto eng = check(engine::shard(*model, *g_comm, options(l, "kill")), "shard");
  train(*eng, *model, 0, 2);
  check(ckpt::save_checkpoint(*eng, save_options(dir, 2)), "save 2");
  train(*eng, *model, 2, 3);
  ckpt::SaveOptions o = save_options(dir, 3);
  o.on_point = [&](std::string_view p) {
    if (p == point && g_comm->rank() == victim) ::raise(SIGKILL);
  };
  auto r = ckpt::save_checkpoint(*eng, o);
  if (!r) strata::testing::expected_failure(r.error());
  // Killed after its last collective: the others may finish.
}

// A step saved again (as after resuming from an earlier checkpoint): the new one
// replaces the old atomically, and latest loads it.
void resave(const std::string& dir) {
  auto model = std::make_shared<AwkwardModel>(kSeed);
  auto eng = check(engine::shard(*model, *g_comm, options({3, "host", 2048}, "resave")), "shard");
  train(*eng, *model, 0, 3);
  check(ckpt::save_checkpoint(*eng, save_options(dir, 3)), "save 3");
  train(*eng, *model, 3, 4);
  check(eng->save_checkpoint(dir, 3), "save 3 again (Engine::save_checkpoint)");
  auto other = std::make_shared<AwkwardModel>(kSeed + 3);
  auto fresh = check(engine::shard(*other, *g_comm, options({3, "host", 2048}, "resave2")), "shard");
  auto loaded = check(ckpt::load_checkpoint(*fresh, dir), "load");
  if (loaded.meta.step != 3 || fresh->steps() != 4) fail(fmt::format("loaded step {} with {} optimizer steps, expected 3 and 4", loaded.meta.step, fresh->steps()));
}

void check_latest(const std::string& dir, std::int64_t step) {
  auto model = std::make_shared<AwkwardModel>(kSeed + 2);
  auto eng = check(engine::shard(*model, *g_comm, options({3, "host", 2048}, "check")), "shard");
  const std::int64_t loaded = check(eng->load_checkpoint(dir), "load latest (Engine::load_checkpoint)");
  if (loaded != step) fail(fmt::format("latest is step {}, expected {}", loaded, step));
}

void nospace(const std::string& dir, const Layout& l) {
  auto model = std::make_shared<AwkwardModel>(kSeed);
  auto eng = check(engine::shard(*model, *g_comm, options(l, "nospace")), "shard");
  train(*eng, *model, 0, 2);
  check(ckpt::save_checkpoint(*eng, save_options(dir, 2)), "save 2");
  train(*eng, *model, 2, 3);
  if (g_comm->rank() == 0) {  // leave a few KiB: less than one checkpoint
    std::ofstream fill(fs::path(dir) / "filler", std::ios::binary);
    const std::string block(4096, 'x');
    while (fill.write(block.data(), block.size())) {
    }
  }
  check(g_comm->barrier().wait(), "barrier");
  auto r = ckpt::save_checkpoint(*eng, save_options(dir, 3));
  if (r) fail("the save onto a full disk succeeded");
  strata::testing::expected_failure(r.error());
}

// An EIO in the last rank's data file mid-save: every rank fails naming that file, and
// step-2 stays the checkpoint latest names.
void eio(const std::string& dir) {
  auto model = std::make_shared<AwkwardModel>(kSeed);
  auto eng = check(engine::shard(*model, *g_comm, options({3, "host", 2048}, "eio")), "shard");
  train(*eng, *model, 0, 2);
  check(ckpt::save_checkpoint(*eng, save_options(dir, 2)), "save 2");
  train(*eng, *model, 2, 3);
  ckpt::SaveOptions o = save_options(dir, 3);
  if (g_comm->rank() == g_comm->world() - 1) {
    o.faults = std::make_shared<io::FaultInjector>();
    o.faults->fail_next(EIO, 1, io::FaultTarget::kWrite);
  }
  auto r = ckpt::save_checkpoint(*eng, o);
  if (r) fail("a save with a failed write succeeded");
  strata::testing::expected_failure(r.error());
}

// Two layers, every parameter trained: once each has had a gradient, a step skips the
// gradient-flag all-reduce (ParamSteps::sync).
struct DenseModel : torch::nn::Module {
  torch::nn::Linear a{nullptr}, b{nullptr};
  explicit DenseModel(std::uint64_t seed) {
    torch::manual_seed(seed);
    a = register_module("a", torch::nn::Linear(8, 16));
    b = register_module("b", torch::nn::Linear(16, 4));
  }
  double step(engine::Engine& eng, std::int64_t s) {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(500 + s);
    const at::Tensor x = at::randn({kRows, 8}, g), y = at::randn({kRows, 4}, g);
    const std::int64_t per = kRows / g_comm->world();
    const at::Tensor out = engine::forward(b, at::tanh(engine::forward(a, x.narrow(0, per * g_comm->rank(), per))));
    at::Tensor loss = at::mse_loss(out, y.narrow(0, per * g_comm->rank(), per));
    check(eng.backward(loss), "backward");
    check(eng.step(), "step");
    return loss.item<double>();
  }
};

// A model within one chunk shard (chunk 1M elements at stage 2): rank 0's shard holds
// every parameter, the other ranks' none. Saved after 2 steps and loaded into a fresh
// engine, it trains steps 2-3 with the losses of the engine that saved it, bit for bit.
void one_shard(const std::string& dir) {
  const Layout l{2, "host", 1 << 20};
  DenseModel model(kSeed), fresh(kSeed + 1);
  auto eng = check(engine::shard(model, *g_comm, options(l, "one-shard")), "shard");
  for (std::int64_t s = 0; s < 2; ++s) model.step(*eng, s);
  check(ckpt::save_checkpoint(*eng, save_options(dir, 2)), "save");
  auto loaded = check(engine::shard(fresh, *g_comm, options(l, "one-shard-2")), "shard");
  check(ckpt::load_checkpoint(*loaded, dir), "load");
  for (std::int64_t s = 2; s < 4; ++s) {
    const double want = model.step(*eng, s), got = fresh.step(*loaded, s);
    if (got != want) fail(fmt::format("step {}: loss {} after loading, {} without", s, got, want));
  }
}

// The caller's buffers (SaveOptions::buffers): rank 0's values are saved, whatever the
// other ranks hold; they load in place on every rank by name, converted to each target's
// dtype, also from a checkpoint resharded for 3 ranks; a model whose buffers differ is
// refused by name before anything loads (the expected failure).
void buffers(const std::string& dir) {
  auto model = std::make_shared<AwkwardModel>(kSeed);
  auto eng = check(engine::shard(*model, *g_comm, options({3, "host", 2048}, "buffers")), "shard");
  train(*eng, *model, 0, 1);
  const auto rank = static_cast<float>(g_comm->rank());
  ckpt::SaveOptions o = save_options(dir, 1);
  o.buffers = {{"bn.running_mean", at::arange(5, at::kFloat) + 100 * rank},
               {"bn.num_batches_tracked", at::full({}, static_cast<std::int64_t>((1LL << 40) + g_comm->rank()), at::kLong)},
               {"mask", at::tensor(std::vector<std::uint8_t>{1, g_comm->rank() == 0, 1}).to(at::kBool)}};
  check(ckpt::save_checkpoint(*eng, o), "save");
  if (g_comm->rank() == 0) check(ckpt::reshard_checkpoint(fs::path(dir) / "step-1", 3, fs::path(dir) / "r3"), "reshard");
  check(g_comm->barrier().wait(), "barrier");
  for (const fs::path& from : {fs::path(dir), fs::path(dir) / "r3"}) {
    std::vector<ckpt::NamedBuffer> into = {{"mask", at::zeros({3}, at::kBool)},
                                           {"bn.running_mean", at::zeros({5}, at::kBFloat16)},
                                           {"bn.num_batches_tracked", at::zeros({}, at::kLong)}};
    check(ckpt::load_checkpoint(*eng, from, {.buffers = into}), ("load " + from.string()).c_str());
    if (!at::equal(into[0].value, at::ones({3}, at::kBool)) ||
        !at::equal(into[1].value, at::arange(5, at::kFloat).to(at::kBFloat16)) ||
        into[2].value.item<std::int64_t>() != (1LL << 40)) {
      fail(fmt::format("{}: loaded buffers {} / {} / {}, not rank 0's", from.string(), c10::str(into[0].value),
                       c10::str(into[1].value), into[2].value.item<std::int64_t>()));
    }
  }
  const at::Tensor untouched = at::full({6}, 9.0f);
  std::vector<ckpt::NamedBuffer> other = {{"bn.running_mean", untouched}, {"extra", at::zeros({2})}};
  auto r = ckpt::load_checkpoint(*eng, dir, {.buffers = other});
  if (r) fail("buffers of another model loaded");
  if (!at::equal(untouched, at::full({6}, 9.0f))) fail("a refused load wrote a buffer");
  strata::testing::expected_failure(r.error());
}

}  // namespace

int main(int argc, char** argv) {
  strata::install_fatal_signal_report("ckpt_worker");  // Note [fatal signal report]
  std::vector<std::string> a(argv + 1, argv + argc);
  if (a.empty()) fail("usage: ckpt_worker MODE ...");
  comm::CommOptions co;
  co.timeout = std::chrono::milliseconds(a[0] == "kill" ? 4000 : 60000);
  auto comm = check(comm::init_from_env(co), "init");
  g_comm = comm.get();
  strata::testing::worker_comm() = g_comm;
  const std::string& mode = a[0];
  if (mode == "save") save(a.at(1), parse_layout(a.at(2)), std::stoll(a.at(3)));
  else if (mode == "load") load(a.at(1), parse_layout(a.at(2)), std::stoll(a.at(3)));
  else if (mode == "load-bad") load_bad(a.at(1), parse_layout(a.at(2)));
  else if (mode == "load-other") load_other(a.at(1));
  else if (mode == "kill") kill_at(a.at(1), parse_layout(a.at(2)), a.at(3), std::stoi(a.at(4)));
  else if (mode == "check") check_latest(a.at(1), std::stoll(a.at(2)));
  else if (mode == "nospace") nospace(a.at(1), parse_layout(a.at(2)));
  else if (mode == "eio") eio(a.at(1));
  else if (mode == "resave") resave(a.at(1));
  else if (mode == "buffers") buffers(a.at(1));
  else if (mode == "one-shard") one_shard(a.at(1));
  else fail("unknown mode " + mode);
  fmt::print("OK\n");
  return 0;
}
