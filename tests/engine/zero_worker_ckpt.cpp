// The checkpoint modes of zero_worker (see zero_worker.cpp): a consolidated state dict
// saved at one world size and resumed at another, against uninterrupted training.
#include <torch/serialize.h>

#include "zero_worker.h"

namespace strata::testing::zero {

// MODE "bf16-state": the optimizer state in bf16 (the state dict holds it widened).
void save(const std::string& dir, int steps, const std::string& mode) {
  OptimizerConfig oc = optim_config("adam");
  ToyModel model(7);
  auto opts = sharded_options(2, oc);
  if (mode == "bf16-state") opts.optim_state_dtype = at::kBFloat16;
  auto opt = check(engine::Engine::create(trainable(model), world_comm(), opts), "create");
  for (int s = 0; s < steps; ++s) {
    auto [x, y] = my_rows(s, kRowsPerRank * 4 / world_comm().world());  // 24 rows per step at any world size
    check(opt->backward(model.loss(x, y)), "backward");
    check(opt->step(), "step");
  }
  auto full = check(opt->consolidate_state_dict(0), "consolidate");
  if (world_comm().rank() == 0 && mode == "bf16-state") {  // fp32 tensors of bf16 values, exactly
    for (auto& [key, ps] : full->state()) {
      auto& a = dynamic_cast<torch::optim::AdamParamState&>(*ps);
      for (const at::Tensor& t : {a.exp_avg(), a.exp_avg_sq()})
        if (t.scalar_type() != at::kFloat || !at::equal(t, t.to(at::kBFloat16).to(at::kFloat)))
          fail("the saved bf16 state is not its bf16 values in fp32");
    }
  }
  if (world_comm().rank() == 0) {
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
  auto opt = check(engine::Engine::create(trainable(model), world_comm(), opts), "create");
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
    cont = check(engine::Engine::create(trainable(uninterrupted), world_comm(), cont_opts), "create uninterrupted");
  }
  for (int s = 0; s < 2 * steps; ++s) {
    auto [x, y] = my_rows(s, kRowsPerRank * 4 / world_comm().world());
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

}  // namespace strata::testing::zero
