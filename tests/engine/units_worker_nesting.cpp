// units_worker modes whose units nest or reach across: a unit called inside another
// (nested), whose output is the enclosing unit's (nested_tail), a unit computing with
// another module's parameter (adopt), and a leaf unit whose inner units differ across
// ranks (routed). Each against plain LibTorch (train_like_reference).
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>

#include "strata/engine/engine.h"
#include "strata/engine/module_hooks.h"
#include "units_worker.h"

namespace strata::testing::units {
namespace {

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

// An outer unit whose forward ends with the inner unit's call: one tensor is the output
// of both (Note [nested backward]). The inner module is the parent's, so the outer unit
// does not hold its parameters (as strata.fully_shard's root holds only what no inner
// unit took). Before the fix the outer unit's start closed the inner one, releasing its
// chunks before its backward ran (an ATen error or a crash).
struct TailOuter : torch::nn::Module {
  torch::nn::Linear in{nullptr};
  std::shared_ptr<Inner> inner;  // not registered here
  explicit TailOuter(std::shared_ptr<Inner> i) : inner(std::move(i)) {
    in = register_module("in", torch::nn::Linear(16, 32));
  }
  at::Tensor forward(const at::Tensor& x) { return engine::forward(inner, at::tanh(in->forward(x))); }
};
struct TailNested : torch::nn::Module {
  std::shared_ptr<Inner> inner;
  std::shared_ptr<TailOuter> outer;
  torch::nn::Linear head{nullptr};
  TailNested() {
    // Registered in unit order, the order of the engine's consolidated parameters.
    auto i = std::make_shared<Inner>();
    outer = register_module("outer", std::make_shared<TailOuter>(i));
    inner = register_module("inner", i);
    head = register_module("head", torch::nn::Linear(32, 4));
  }
  at::Tensor forward(const at::Tensor& x) { return engine::forward(head, engine::forward(outer, x)); }
};

template <class Model>
void nested_as() {
  at::manual_seed(5);
  auto model = std::make_shared<Model>();
  at::manual_seed(5);
  auto ref = std::make_shared<Model>();
  engine::EngineOptions o = small_unit_options();
  o.schedule.max_reuse_distance_elems = 0;  // release after every use: nesting must hold them
  std::vector<engine::ModuleUnit> units = {{.module = model->outer, .name = "outer"},
                                         {.module = model->outer->inner, .name = "inner"},
                                         {.module = model->head.ptr(), .name = "head"}};
  auto eng = check(engine::shard(*model, *worker_comm(), o, units), "shard");
  torch::optim::SGD ref_opt(ref->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  train_like_reference(
      *eng, [&](const at::Tensor& x, int) { return model->forward(x); },
      [&](const at::Tensor& x, int) { return ref->forward(x); }, ref_opt, ref->parameters(), 8, 90, /*scheduled_from=*/2);
}

// Note [adopted parameters]: a unit whose forward computes with a parameter of a module
// it does not hold (`other`, a unit of its own that is never called, as torchvision's
// Swin attention reads its children's weights). The C++ front end says so with
// adopt_param(): the reader's unit takes the parameter, gathered now and in its
// backward and later steps (released after every use otherwise). Training matches plain
// LibTorch and follows the schedule from step 2; outside a forward adopt_param is false
// and adopts nothing.
struct Reader : torch::nn::Module {
  torch::nn::Linear in{nullptr};
  torch::nn::Linear other{nullptr};  // the parent's
  engine::Engine* eng = nullptr;      // null: plain LibTorch
  explicit Reader(torch::nn::Linear o) : other(std::move(o)) { in = register_module("in", torch::nn::Linear(16, 32)); }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = at::tanh(in->forward(x));
    if (eng != nullptr) {
      for (const at::Tensor& p : {other->weight, other->bias})
        if (!check(eng->adopt_param(p), "adopt_param")) fail("adopt_param inside a forward adopted nothing");
    }
    return at::linear(h, other->weight, other->bias);
  }
};
struct ReadsOther : torch::nn::Module {
  torch::nn::Linear other{nullptr}, head{nullptr};
  std::shared_ptr<Reader> reader;
  ReadsOther() {
    other = register_module("other", torch::nn::Linear(32, 32));
    reader = register_module("reader", std::make_shared<Reader>(other));
    head = register_module("head", torch::nn::Linear(32, 4));
  }
  at::Tensor forward(const at::Tensor& x) { return engine::forward(head, at::tanh(engine::forward(reader, x))); }
};

// A top-1 mixture of experts: each row goes to the expert its gate scores highest, and
// an expert no row chose is not called, so which expert units run depends on each
// rank's rows. The block is a leaf unit (ModuleUnit::leaf): its calls of the gate and
// the experts, units of their own, are gathered with it (Note [covered units]) and its
// chunks reduced when its backward access ends (Note [reductions at access ends]).
struct Routed : torch::nn::Module {
  torch::nn::Linear gate{nullptr};
  torch::nn::ModuleList experts{nullptr};
  Routed() {
    gate = register_module("gate", torch::nn::Linear(32, 4));
    experts = register_module("experts", torch::nn::ModuleList());
    for (int e = 0; e < 4; ++e) experts->push_back(torch::nn::Linear(32, 32));
    at::NoGradGuard no_grad;
    gate->weight.mul_(8);  // scores far apart: each row's choice follows its input, not the bias
  }
  at::Tensor choice(const at::Tensor& x) { return gate->forward(x).argmax(-1); }
  at::Tensor forward(const at::Tensor& x) {
    const at::Tensor weights = engine::forward(gate, x).softmax(-1);
    const at::Tensor chosen = weights.argmax(-1);
    at::Tensor out = at::zeros_like(x);
    for (int e = 0; e < 4; ++e) {
      const at::Tensor rows = (chosen == e).nonzero().squeeze(1);
      if (rows.numel() == 0) continue;
      const at::Tensor y = engine::forward_as<torch::nn::LinearImpl>(experts[e], x.index_select(0, rows));
      out = out.index_add(0, rows, at::tanh(y) * weights.index_select(0, rows).select(1, e).unsqueeze(1));
    }
    return x + out;
  }
};
struct RoutedNet : torch::nn::Module {
  torch::nn::Linear in{nullptr}, head{nullptr};
  std::shared_ptr<Routed> routed;
  RoutedNet() {
    in = register_module("in", torch::nn::Linear(16, 32));
    routed = register_module("routed", std::make_shared<Routed>());
    head = register_module("head", torch::nn::Linear(32, 4));
  }
  at::Tensor forward(const at::Tensor& x) {
    return engine::forward(head, engine::forward(routed, at::tanh(engine::forward(in, x))));
  }
};

}  // namespace

void nested(bool tail) { tail ? nested_as<TailNested>() : nested_as<Nested>(); }

void adopt() {
  at::manual_seed(7);
  auto model = std::make_shared<ReadsOther>();
  at::manual_seed(7);
  auto ref = std::make_shared<ReadsOther>();
  engine::EngineOptions o = small_unit_options();
  o.schedule.max_reuse_distance_elems = 0;  // release after every use
  std::vector<engine::ModuleUnit> units = {{.module = model->other.ptr(), .name = "other"},
                                         {.module = model->reader, .name = "reader"},
                                         {.module = model->head.ptr(), .name = "head"}};
  auto eng = check(engine::shard(*model, *worker_comm(), o, units), "shard");
  if (check(eng->adopt_param(model->other->weight), "adopt_param")) fail("adopt_param outside a forward adopted");
  model->reader->eng = eng.get();
  torch::optim::SGD ref_opt(ref->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  train_like_reference(
      *eng, [&](const at::Tensor& x, int) { return model->forward(x); },
      [&](const at::Tensor& x, int) { return ref->forward(x); }, ref_opt, ref->parameters(), 6, 40, /*scheduled_from=*/1);
  if (check(eng->adopt_param(model->other->weight), "adopt_param")) fail("adopt_param between steps adopted");
}

// The experts the rows of each rank choose at step 0 differ (the premise), and training
// matches plain LibTorch on the whole batch, from step 1 on the schedule: the trace is
// every rank's (the experts' calls are not in it). Before, the ranks' collectives
// diverged in the first backward (an all-gather against a reduce-scatter).
void routed() {
  const int world = worker_comm()->world();
  at::manual_seed(11);
  auto model = std::make_shared<RoutedNet>();
  at::manual_seed(11);
  auto ref = std::make_shared<RoutedNet>();
  {
    at::NoGradGuard no_grad;
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(120);  // train_like_reference's step 0 batch
    const at::Tensor chosen = ref->routed->choice(at::tanh(ref->in->forward(at::randn({4 * world, 16}, g))));
    std::vector<std::vector<bool>> used(static_cast<std::size_t>(world), std::vector<bool>(4, false));
    for (int r = 0; r < 4 * world; ++r) used[static_cast<std::size_t>(r / 4)][chosen[r].item<std::int64_t>()] = true;
    if (world > 1 && used[0] == used[1]) {
      fail(fmt::format("the premise: the ranks' rows should choose different experts; chose {}",
                       fmt::join(chosen.data_ptr<std::int64_t>(), chosen.data_ptr<std::int64_t>() + chosen.numel(), ",")));
    }
  }
  engine::EngineOptions o = small_unit_options();
  o.schedule.max_reuse_distance_elems = 0;  // release after every use
  std::vector<engine::ModuleUnit> units = {{.module = model->in.ptr(), .name = "in"},
                                         {.module = model->routed, .name = "routed", .leaf = true},
                                         {.module = model->routed->gate.ptr(), .name = "gate"}};
  for (int e = 0; e < 4; ++e) units.push_back({.module = model->routed->experts[e], .name = fmt::format("expert{}", e)});
  units.push_back({.module = model->head.ptr(), .name = "head"});
  auto eng = check(engine::shard(*model, *worker_comm(), o, units), "shard");
  torch::optim::SGD ref_opt(ref->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  train_like_reference(
      *eng, [&](const at::Tensor& x, int) { return model->forward(x); },
      [&](const at::Tensor& x, int) { return ref->forward(x); }, ref_opt, ref->parameters(), 8, 120,
      /*scheduled_from=*/1);
}

}  // namespace strata::testing::units
