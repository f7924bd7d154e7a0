// units_worker bigtier: nvme records at a real size (64 MiB) against plain LibTorch.
#include <array>
#include <cstdlib>
#include <optional>
#include <string>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>

#include "strata/comm/torch_compat.h"
#include "strata/engine/engine.h"
#include "strata/engine/module_hooks.h"
#include "bf16_state_reference.h"
#include "toy_model.h"
#include "units_worker.h"

namespace strata::testing::units {

// Two layers of 33.5M weights, one chunk each: at world 2 every swap record (a
// parameter shard, a master, a momentum buffer) is 16.8M fp32 elements, 64 MiB. Stage 2
// keeps the optimizer state on nvme; stage 3 the parameter shards too. The optimizer
// state is kept in sub-groups of 16M elements (a 64 MiB record and a partial one per
// tensor, Note [optimizer sub-groups]); at stage 3 max_in_cpu keeps one weight's shard
// on host and the other on nvme. Three steps against plain LibTorch SGD with momentum.
// CASE "2-bf16-split": stage 2 with the momentum and the gradient shards in bf16 (32 MiB
// records), the first weight's state kept on host by optimizer_max_in_cpu, stepped by
// ATen ops (host_step), against the reference with its momentum and its gradients
// rounded alike (bf16_state_reference.h). CASE "2" also has two parameter groups. After
// the second step a weight is clipped on every rank and in the reference: at stage 2 in
// place (the engine takes the edit into its 64 MiB master records, Note [edited
// parameters]), at stage 3 through gather_params / release_params (Note [gathered
// parameters]: its nvme shard and master records).
struct Big : torch::nn::Module {
  torch::nn::Linear a{nullptr}, b{nullptr};
  Big() {
    a = register_module("a", torch::nn::Linear(8192, 4096));
    b = register_module("b", torch::nn::Linear(4096, 8192));
  }
  at::Tensor forward(const at::Tensor& x) { return engine::forward(b, at::tanh(engine::forward(a, x))); }
};

void bigtier(const std::string& which) {
  const int stage = which.front() - '0';
  const bool bf16_split = which == "2-bf16-split";
  // Note [gradients kept on compute]: stage 3's 64 MiB gradient shards stay on compute,
  // copied to the host at the step, with one weight's state on host and one's on nvme.
  const bool kept_grads = which == "3-grads-on-compute";
  // Only rank 0 trains the reference: it sees the whole batch, and compares.
  const bool compares = worker_comm()->rank() == 0;
  at::manual_seed(6);
  auto model = std::make_shared<Big>();
  at::manual_seed(6);
  auto ref = compares ? std::make_shared<Big>() : nullptr;
  engine::EngineOptions o = small_unit_options();
  o.stage = stage;
  o.optimizer.lr = 0.01;
  o.chunks.chunk_size_elems = 0;  // searched: each weight gets a chunk of its own
  o.chunks.io_align_bytes = 4096;
  o.optim_device = OffloadDevice::kNvme;
  if (stage == 3) o.param_device = OffloadDevice::kNvme;
  o.optim_pipeline.sub_group_elems = 16 << 20;
  if (stage == 3) o.param_staging.max_in_cpu = 20'000'000;
  o.schedule.persistence_threshold_elems = 0;
  o.swap.nvme_path = std::getenv("STRATA_TEST_NVME");
  o.swap.job_name = fmt::format("bigtier-{}", which);
  if (bf16_split) {
    o.optim_state_dtype = at::kBFloat16;
    o.grad_shard_dtype = at::kBFloat16;
    o.optim_max_in_cpu = 20'000'000;  // one weight's shard (16.8M elements), not both
    o.host_step = engine::EngineOptions::StepKernels::kTensorOps;
  }
  if (kept_grads) {
    o.gradient_shards_on_compute = true;
    o.optim_max_in_cpu = 20'000'000;
  }
  // Stage 2: two parameter groups (Note [parameter groups]), crossed so that every weight
  // shares its chunk with its bias, of the other group: the step's runs stop at the
  // group change inside a 64 MiB record.
  const bool grouped = which == "2";
  const auto groups_of = [](Big& m) {
    return std::array<std::vector<at::Tensor>, 2>{{{m.a->weight, m.b->bias}, {m.a->bias, m.b->weight}}};
  };
  constexpr double kDecay = 0.01, kScale = 0.5;
  if (grouped) {
    auto gs = groups_of(*model);
    o.param_groups = {{.params = gs[0], .weight_decay = kDecay}, {.params = gs[1], .lr_scale = kScale}};
    // A weight and its bias per chunk; rank 1's 64 MiB sub-group record holds the change.
    o.chunks.chunk_size_elems = 8192 * 4096 + 8192;
  }
  auto eng = check(engine::shard(*model, *worker_comm(), o), "shard");
  if (grouped) {
    const plan::ChunkLayout& layout = eng->store().layout();
    const auto chunk_of = [&](const at::Tensor& t) {
      for (std::size_t i = 0; i < eng->store().params().size(); ++i)
        if (eng->store().params()[i].is_same(t)) return layout.where[i].chunk;
      fail("a parameter is not in the store");
    };
    if (chunk_of(model->a->weight) != chunk_of(model->a->bias) || chunk_of(model->b->weight) != chunk_of(model->b->bias))
      fail("a weight and its bias are in different chunks: no chunk holds two groups");
  }
  for (std::size_t c = 0; c < eng->store().num_chunks(); ++c) {
    const auto shard_bytes = static_cast<std::uint64_t>(eng->store().shard_elems(c)) * 4;
    if (eng->store().chunk(c).size_elems > 1'000'000 && shard_bytes < (64ull << 20))
      fail(fmt::format("chunk {}: a record of {} bytes, not a real-size one", c, shard_bytes));
  }
  // max_in_cpu: a weight's parameter shard (stage 3) or optimizer state (bf16_split) on
  // host, the other's on nvme. (With kept_grads, the first weight's state is on host too,
  // so its shard is made from the master: Note [shard from master].)
  if ((stage == 3 && !kept_grads) || bf16_split) {
    const auto by_kind = eng->memory_by_kind();
    const auto kind = plan::kind_index(stage == 3 ? plan::StateKind::kParams : plan::StateKind::kOptimizer);
    if (by_kind[plan::tier_index(plan::Tier::kHost)][kind] < (64ull << 20) ||
        by_kind[plan::tier_index(plan::Tier::kNvme)][kind] < (64ull << 20))
      fail("max_in_cpu: expected a weight's state on host and another's on nvme");
  }
  if (kept_grads) {
    const auto by_kind = eng->memory_by_kind();
    strata::testing::expect_grads_kept_on_compute(by_kind);
    const auto at = [&](plan::Tier t, plan::StateKind k) { return by_kind[plan::tier_index(t)][plan::kind_index(k)]; };
    if (at(plan::Tier::kCompute, plan::StateKind::kGrads) < (128ull << 20) ||
        at(plan::Tier::kHost, plan::StateKind::kOptimizer) == 0 || at(plan::Tier::kNvme, plan::StateKind::kOptimizer) == 0) {
      fail("gradients kept on compute: expected both weights' gradient shards on compute, the state on host and nvme");
    }
  }
  std::optional<torch::optim::SGD> ref_opt;
  if (compares && grouped) {
    auto gs = groups_of(*ref);
    ref_opt.emplace(std::vector<torch::optim::OptimizerParamGroup>{
                        {gs[0], std::make_unique<torch::optim::SGDOptions>(
                                    torch::optim::SGDOptions(0.01).momentum(0.9).weight_decay(kDecay))},
                        {gs[1], std::make_unique<torch::optim::SGDOptions>(
                                    torch::optim::SGDOptions(0.01 * kScale).momentum(0.9))}},
                    torch::optim::SGDOptions(0.01));
  } else if (compares) {
    ref_opt.emplace(ref->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  }
  const std::int64_t rows = 4;
  for (int s = 0; s < 3; ++s) {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(60 + s);
    at::Tensor x = at::randn({rows * worker_comm()->world(), 8192}, g), y = at::randn({rows * worker_comm()->world(), 8192}, g);
    at::Tensor mx = x.narrow(0, rows * worker_comm()->rank(), rows), my = y.narrow(0, rows * worker_comm()->rank(), rows);
    check(eng->backward(at::mse_loss(model->forward(mx), my)), "backward");
    check(eng->step(), "step");
    const auto clip = [&](Big& m) {
      at::NoGradGuard no_grad;
      m.a->weight.clamp_(-0.005, 0.005);  // about half its elements (bound 1/sqrt(8192))
    };
    if (stage == 2 && s == 1) clip(*model);
    if (stage == 3 && s == 1) {
      const std::vector<at::Tensor> weight = {model->a->weight};
      std::vector<at::Tensor> value = check(eng->gather_params(weight), "gather_params");
      if (!value[0].sizes().equals(model->a->weight.sizes())) fail("gather_params: not the weight's shape");
      value[0].clamp_(-0.005, 0.005);
      check(eng->release_params(weight, value), "release_params");
    }
    if (!compares) continue;
    torch_compat::zero_grad_keep(*ref_opt);
    at::mse_loss(ref->forward(x), y).backward();
    if (bf16_split)
      for (auto& p : ref->parameters()) p.grad().copy_(p.grad().to(at::kBFloat16));
    ref_opt->step();
    if (bf16_split) strata::testing::round_state_to_bf16(*ref_opt);
    if (s == 1) clip(*ref);
  }
  const plan::LinkBytes& moved = eng->last_metrics().moved;
  if (moved.nvme_to_host == 0 || moved.host_to_nvme == 0) fail("the last step moved nothing between nvme and host");
  if (bf16_split) check_bf16_momentum(*eng, which);
  fmt::print("rank {} {}: nvme->host {} host->nvme {} bytes in the last step\n", worker_comm()->rank(), which,
             moved.nvme_to_host, moved.host_to_nvme);
  auto got = check(eng->consolidated_params(), "consolidated");
  if (!compares) return;
  const std::vector<at::Tensor> want = ref->parameters();
  for (std::size_t i = 0; i < got.size(); ++i)
    if (const double e = rel_error(got[i], want[i]); e > (bf16_split ? strata::testing::kBf16StateTol : 1e-5))
      fail(fmt::format("{}: param {} differs, relative error {:.3g}", which, i, e));
}

}  // namespace strata::testing::units
