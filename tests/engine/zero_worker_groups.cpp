// The groups mode of zero_worker (see zero_worker.cpp): parameter groups (Note
// [parameter groups]) against torch::optim with the same groups.
#include <array>
#include <optional>

#include "zero_worker.h"

namespace strata::testing::zero {
namespace {

// Sets group g's weight decay, Adam's betas and SGD's momentum in a torch::optim
// optimizer of `type`.
void set_ref_group(torch::optim::Optimizer& opt, OptimizerType type, std::size_t g, double decay,
                   std::array<double, 2> betas, double momentum) {
  auto& o = opt.param_groups()[g].options();
  switch (type) {
    case OptimizerType::kAdam:
      static_cast<torch::optim::AdamOptions&>(o).weight_decay(decay).betas({betas[0], betas[1]});
      break;
    case OptimizerType::kAdamW:
      static_cast<torch::optim::AdamWOptions&>(o).weight_decay(decay).betas({betas[0], betas[1]});
      break;
    case OptimizerType::kSGD: static_cast<torch::optim::SGDOptions&>(o).weight_decay(decay).momentum(momentum); break;
    case OptimizerType::kAdagrad: static_cast<torch::optim::AdagradOptions&>(o).weight_decay(decay); break;
    case OptimizerType::kLion:
      static_cast<engine::LionOptions&>(o).weight_decay(decay).betas({betas[0], betas[1]});
      break;
    case OptimizerType::kLamb:
      static_cast<engine::LambOptions&>(o).weight_decay(decay).betas({betas[0], betas[1]});
      break;
  }
}

// Group g's weight decay in a torch::optim optimizer of `type`.
double weight_decay_of(torch::optim::Optimizer& opt, OptimizerType type, std::size_t g) {
  auto& o = opt.param_groups()[g].options();
  switch (type) {
    case OptimizerType::kAdam: return static_cast<torch::optim::AdamOptions&>(o).weight_decay();
    case OptimizerType::kAdamW: return static_cast<torch::optim::AdamWOptions&>(o).weight_decay();
    case OptimizerType::kSGD: return static_cast<torch::optim::SGDOptions&>(o).weight_decay();
    case OptimizerType::kAdagrad: return static_cast<torch::optim::AdagradOptions&>(o).weight_decay();
    case OptimizerType::kLion: return static_cast<engine::LionOptions&>(o).weight_decay();
    case OptimizerType::kLamb: return static_cast<engine::LambOptions&>(o).weight_decay();
  }
  return -1;
}

// A torch::optim optimizer of oc's type over `groups`: (parameters, lr scale, weight
// decay) each, as Note [parameter groups] defines them.
struct RefGroup {
  std::vector<at::Tensor> params;
  double lr_scale;
  double weight_decay;
};
// All groups at construction: LibTorch's Adagrad makes its state there, not in
// add_param_group.
std::unique_ptr<torch::optim::Optimizer> grouped_optimizer(const OptimizerConfig& oc, const std::vector<RefGroup>& groups) {
  std::vector<torch::optim::OptimizerParamGroup> pgs;
  for (const RefGroup& g : groups) {
    OptimizerConfig gc = oc;
    gc.lr *= g.lr_scale;
    gc.weight_decay = g.weight_decay;
    pgs.emplace_back(g.params, torch_optimizer(gc, {})->param_groups()[0].options().clone());
  }
  switch (oc.effective_type()) {
    case OptimizerType::kAdam: return std::make_unique<torch::optim::Adam>(std::move(pgs));
    case OptimizerType::kAdamW: return std::make_unique<torch::optim::AdamW>(std::move(pgs));
    case OptimizerType::kSGD: return std::make_unique<torch::optim::SGD>(std::move(pgs), torch::optim::SGDOptions(oc.lr));
    case OptimizerType::kAdagrad: return std::make_unique<torch::optim::Adagrad>(std::move(pgs));
    case OptimizerType::kLion: return std::make_unique<engine::Lion>(std::move(pgs));
    case OptimizerType::kLamb: return std::make_unique<engine::Lamb>(std::move(pgs));
  }
  return nullptr;
}

// groups STAGE OPTIM [MODE]: three parameter groups (Note [parameter groups]): the weights
// with a weight decay of their own, the biases at half the lr without decay, the rest as
// the optimizer; the groups' lrs moved at steps 10, 12 and 13, their weight decays and
// the betas or momentum at step 11 (see train). 15 steps against
// torch::optim with the same groups; then the consolidated optimizer has the groups' lrs,
// loads into a fresh engine, and that trains on with the reference for 5 more steps.
// MODE: nvme (the state there), tensor-ops (ATen ops step it).
}  // namespace

void groups(int stage, const std::string& optim, std::string mode) {
  const OptimizerConfig oc = optim_config(optim);
  Reference ref(oc);
  auto spec = [&](ToyModel& m) {
    return std::vector<RefGroup>{{{m.w1, m.w2}, 1.0, 0.2}, {{m.b1, m.b2}, 0.5, 0.0},
                                 {{m.tiny, m.unused, m.frozen}, 1.0, oc.weight_decay}};
  };
  ref.opt = grouped_optimizer(oc, spec(ref.model));
  auto options = [&](ToyModel& m, const std::string& job) {
    auto o = sharded_options(stage, oc);
    std::string rest = mode;
    take_tensor_ops(rest, o);
    if (rest == "nvme") use_nvme(o, job);
    for (const RefGroup& g : spec(m)) {
      o.param_groups.push_back({.params = g.params, .lr_scale = g.lr_scale,
                                .weight_decay = g.weight_decay == oc.weight_decay ? std::nullopt
                                                                                  : std::optional(g.weight_decay)});
    }
    return o;
  };
  ToyModel model(7);
  auto eng = check(engine::Engine::create(trainable(model), world_comm(), options(model, "groups-a")), "create");
  if (eng->n_param_groups() != 3 || eng->lr_scale(1) != 0.5) fail("the engine does not have the three groups");
  if (eng->set_group_lrs({oc.lr}).has_value() || eng->set_group_lrs({oc.lr, -1.0, oc.lr}).has_value()) {
    fail("set_group_lrs took a wrong count or a negative lr");
  }
  const std::vector<double> moved = {oc.lr / 2, oc.lr / 8, oc.lr / 2};
  const std::vector<double> decays = {0.3, 0.05, 0.0};
  const std::array<double, 2> betas = {0.8, 0.99};
  const double momentum = 0.7;
  if (eng->set_group_weight_decays({0.1, -0.1, 0.1}).has_value() || eng->set_betas({1.0, 0.9}).has_value() ||
      eng->set_momentum(0.0).has_value()) {
    fail("set_group_weight_decays, set_betas or set_momentum took a bad value (or one the optimizer lacks)");
  }
  auto train = [&](engine::Engine& e, ToyModel& m, int from, int to) {
    for (int s = from; s < to; ++s) {
      // Step 10 moves the groups apart, step 12 runs them all at 0 (a warmup's first step)
      // and step 13 sets only the engine's lr (a schedule): the ratios of step 10 return.
      std::optional<std::vector<double>> lrs;
      if (s == 10) lrs = moved;
      if (s == 12) lrs = std::vector<double>(3, 0.0);
      if (lrs) check(e.set_group_lrs(*lrs), "set_group_lrs");
      if (s == 13) {
        e.set_lr(oc.lr / 2);
        lrs = moved;
      }
      if (lrs)
        for (std::size_t g = 0; g < 3; ++g) ref.opt->param_groups()[g].options().set_lr((*lrs)[g]);
      // Step 11: a weight-decay schedule, and the betas or the momentum changed (torch's
      // OneCycleLR).
      if (s == 11) {
        check(e.set_group_weight_decays(decays), "set_group_weight_decays");
        if (e.betas()) check(e.set_betas(betas), "set_betas");
        if (e.momentum()) check(e.set_momentum(momentum), "set_momentum");
        for (std::size_t g = 0; g < 3; ++g)
          set_ref_group(*ref.opt, oc.effective_type(), g, decays[g], betas, momentum);
      }
      auto [x, y] = my_rows(s, kRowsPerRank);
      check(e.backward(m.loss(x, y)), "backward");
      check(e.step(), "step");
      ref.step(s, kRowsPerRank * world_comm().world());
      compare(m, ref.model, 1e-6, fmt::format("groups step {}", s));
    }
  };
  train(*eng, model, 0, 15);
  // Every rank gets the consolidated optimizer (each its turn as the root) and loads it.
  std::unique_ptr<torch::optim::Optimizer> full;
  for (int r = 0; r < world_comm().world(); ++r) {
    auto f = check(eng->consolidate_state_dict(r), "consolidate");
    if (r == world_comm().rank()) full = std::move(f);
  }
  const std::vector<double>& want_lrs = moved;
  const std::vector<std::size_t> want_sizes = {2, 2, 2};  // "frozen" is not trainable
  if (full->param_groups().size() != 3) fail(fmt::format("{} groups consolidated", full->param_groups().size()));
  for (std::size_t g = 0; g < 3; ++g) {
    const auto& pg = full->param_groups()[g];
    if (std::abs(pg.options().get_lr() - want_lrs[g]) > 1e-12 * want_lrs[g] || pg.params().size() != want_sizes[g]) {
      fail(fmt::format("consolidated group {}: lr {} with {} parameters, want {} with {}", g, pg.options().get_lr(),
                       pg.params().size(), want_lrs[g], want_sizes[g]));
    }
  }
  ToyModel fresh(99);  // other values: the loaded masters must replace them
  auto loaded = check(engine::Engine::create(trainable(fresh), world_comm(), options(fresh, "groups-b")), "create fresh");
  check(loaded->load_state_dict(*full), "load_state_dict");
  if (std::abs(loaded->group_lrs()[1] - oc.lr / 8) > 1e-12 * oc.lr) fail("the loaded groups' lrs");
  // The consolidated groups hold the changed weight decays, betas and momentum; loading
  // takes only the lrs (engine.h), so the fresh engine is given the others as a caller
  // would.
  if (eng->group_weight_decays() != decays || loaded->group_weight_decays() == decays)
    fail("consolidate or load changed the wrong weight decays");
  if (std::abs(weight_decay_of(*full, oc.effective_type(), 0) - decays[0]) > 0)
    fail("the consolidated group 0 lacks its weight decay");
  check(loaded->set_group_weight_decays(decays), "set_group_weight_decays");
  if (loaded->betas()) check(loaded->set_betas(betas), "set_betas");
  if (loaded->momentum()) check(loaded->set_momentum(momentum), "set_momentum");
  // "frozen" never trains: the fresh model's stays its own, so copy it for the comparison.
  {
    at::NoGradGuard ng;
    fresh.frozen.copy_(model.frozen);
  }
  train(*loaded, fresh, 15, 20);
}

}  // namespace strata::testing::zero
