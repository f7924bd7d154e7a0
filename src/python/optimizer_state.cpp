// Note [optimizer state dicts] (optimizer_state.h).
#include "optimizer_state.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include "errors.h"
#include "strata/base/config.h"
#include "strata/comm/communicator.h"
#include "strata/comm/torch_compat.h"
#include "strata/engine/engine.h"
#include "strata/engine/lamb.h"
#include "strata/engine/lion.h"

namespace strata::python {
namespace py = pybind11;
namespace optim = torch::optim;

namespace {

[[noreturn]] void refuse(const std::string& what) {
  throw PyStrataError{Error(ErrorCode::kInvalidArgument, "load_state_dict: " + what)};
}

// The optimizer Engine::consolidate_state_dict builds for this rank (every rank is the
// recipient once: each call is a collective). Its parameters are the full fp32 masters.
std::unique_ptr<optim::Optimizer> consolidated(engine::Engine& eng, comm::Communicator& comm) {
  py::gil_scoped_release nogil;
  std::unique_ptr<optim::Optimizer> mine;
  for (int r = 0; r < comm.world(); ++r) {
    auto opt = value_or_throw(eng.consolidate_state_dict(r));
    if (r == comm.rank()) mine = std::move(opt);
  }
  return mine;
}

py::object tensor_or_none(const at::Tensor& t) { return t.defined() ? py::cast(t) : py::object(py::none()); }

template <class State>
py::dict adam_like(const State& s) {
  py::dict d;
  d["step"] = s.step();
  d["exp_avg"] = s.exp_avg();
  d["exp_avg_sq"] = s.exp_avg_sq();
  if (s.max_exp_avg_sq().defined()) d["max_exp_avg_sq"] = s.max_exp_avg_sq();
  return d;
}

py::dict to_python(optim::OptimizerParamState& ps) {
  if (auto* s = dynamic_cast<optim::AdamWParamState*>(&ps)) return adam_like(*s);
  if (auto* s = dynamic_cast<optim::AdamParamState*>(&ps)) return adam_like(*s);
  if (auto* s = dynamic_cast<optim::SGDParamState*>(&ps)) return py::dict(py::arg("momentum_buffer") = tensor_or_none(s->momentum_buffer()));
  if (auto* s = dynamic_cast<optim::AdagradParamState*>(&ps)) return py::dict(py::arg("step") = s->step(), py::arg("sum") = s->sum());
  if (auto* s = dynamic_cast<engine::LionParamState*>(&ps)) return py::dict(py::arg("step") = s->step(), py::arg("exp_avg") = s->exp_avg());
  if (auto* s = dynamic_cast<engine::LambParamState*>(&ps)) {
    return py::dict(py::arg("step") = s->step(), py::arg("exp_avg") = s->exp_avg(), py::arg("exp_avg_sq") = s->exp_avg_sq());
  }
  throw PyStrataError{Error(ErrorCode::kInternal, "state_dict: an optimizer state of no known type")};
}

[[noreturn]] void missing(const py::dict& d, const char* name, const std::string& where) {
  std::string keys;
  for (auto item : d) {
    if (!keys.empty()) keys += ", ";
    keys += py::str(item.first).cast<std::string>();
  }
  refuse(fmt::format("{}'s state has no {} (it has {}): a state dict of another optimizer?", where, name,
                     keys.empty() ? "nothing" : keys));
}

// `name` of a saved state, an fp32 tensor of the parameter's shape (not copied when it
// is one: Engine::load_state_dict only reads it).
at::Tensor tensor_of(const py::dict& d, const char* name, const at::Tensor& param, const std::string& where) {
  if (!d.contains(name) || d[name].is_none()) missing(d, name, where);
  const auto t = d[name].cast<at::Tensor>();
  if (t.sizes() != param.sizes()) {
    refuse(fmt::format("{}'s {} has shape {}, the parameter's is {}", where, name, c10::str(t.sizes()), c10::str(param.sizes())));
  }
  return t.detach().to(at::kFloat);
}

std::int64_t step_of(const py::dict& d, const std::string& where) {
  if (!d.contains("step")) missing(d, "step", where);
  return d["step"].cast<std::int64_t>();
}

template <class State>
std::unique_ptr<optim::OptimizerParamState> adam_state(const py::dict& d, const at::Tensor& p, const std::string& where,
                                                       bool amsgrad) {
  auto s = std::make_unique<State>();
  s->step(step_of(d, where)).exp_avg(tensor_of(d, "exp_avg", p, where)).exp_avg_sq(tensor_of(d, "exp_avg_sq", p, where));
  if (amsgrad) s->max_exp_avg_sq(tensor_of(d, "max_exp_avg_sq", p, where));
  return s;
}

// The saved state of parameter p as the engine's optimizer type holds it.
std::unique_ptr<optim::OptimizerParamState> from_python(const OptimizerConfig& oc, const py::dict& d,
                                                        const at::Tensor& p, const std::string& where) {
  switch (oc.effective_type()) {
    case OptimizerType::kAdamW: return adam_state<optim::AdamWParamState>(d, p, where, oc.amsgrad);
    case OptimizerType::kAdam: return adam_state<optim::AdamParamState>(d, p, where, oc.amsgrad);
    case OptimizerType::kSGD: {
      auto s = std::make_unique<optim::SGDParamState>();
      if (d.contains("momentum_buffer") && !d["momentum_buffer"].is_none()) {
        s->momentum_buffer(tensor_of(d, "momentum_buffer", p, where));
      }
      return s;
    }
    case OptimizerType::kAdagrad: {
      auto s = std::make_unique<optim::AdagradParamState>();
      s->step(step_of(d, where)).sum(tensor_of(d, "sum", p, where));
      return s;
    }
    case OptimizerType::kLion: {
      auto s = std::make_unique<engine::LionParamState>();
      s->step(step_of(d, where)).exp_avg(tensor_of(d, "exp_avg", p, where));
      return s;
    }
    case OptimizerType::kLamb: {
      auto s = std::make_unique<engine::LambParamState>();
      s->step(step_of(d, where)).exp_avg(tensor_of(d, "exp_avg", p, where)).exp_avg_sq(tensor_of(d, "exp_avg_sq", p, where));
      return s;
    }
  }
  throw PyStrataError{Error(ErrorCode::kInternal, "load_state_dict: an optimizer of no known type")};
}

// What Engine::load_state_dict reads: groups of full parameters (their values become the
// masters) with the groups' lrs, and per-parameter state of the engine's type. Any
// torch::optim class carries that; torch::optim::Adagrad would make state of its own.
std::unique_ptr<optim::Optimizer> holder(std::vector<optim::OptimizerParamGroup> groups) {
  return std::make_unique<optim::SGD>(std::move(groups), optim::SGDOptions(0.0));
}

}  // namespace

py::list optimizer_state(engine::Engine& eng, comm::Communicator& comm) {
  std::unique_ptr<optim::Optimizer> opt = consolidated(eng, comm);
  py::list groups;
  for (const auto& group : opt->param_groups()) {
    py::list states;
    for (const at::Tensor& p : group.params()) {
      auto it = opt->state().find(torch_compat::optim_state_key(p));
      states.append(it == opt->state().end() ? py::object(py::none()) : py::object(to_python(*it->second)));
    }
    groups.append(states);
  }
  return groups;
}

void load_optimizer_state(engine::Engine& eng, const py::list& groups, const std::vector<std::vector<std::string>>& names) {
  std::vector<at::Tensor> masters;
  {
    py::gil_scoped_release nogil;
    masters = value_or_throw(eng.consolidated_params());  // kept as they are: collective, as the load below
  }
  const std::vector<double> lrs = eng.group_lrs();
  if (groups.size() != lrs.size() || names.size() != groups.size()) {
    refuse(fmt::format("{} parameter group(s), the engine has {}", groups.size(), lrs.size()));
  }
  std::vector<optim::OptimizerParamGroup> param_groups;
  std::vector<std::pair<at::Tensor, std::unique_ptr<optim::OptimizerParamState>>> states;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const auto listed = groups[g].cast<py::list>();
    if (names[g].size() != listed.size()) refuse(fmt::format("{} names for {} parameters", names[g].size(), listed.size()));
    std::vector<at::Tensor> params;
    for (std::size_t j = 0; j < listed.size(); ++j) {
      const auto entry = listed[j].cast<py::tuple>();  // (engine parameter index, state or None)
      const auto i = entry[0].cast<std::size_t>();
      if (i >= masters.size()) refuse(fmt::format("{} is not one of the engine's parameters", names[g][j]));
      params.push_back(masters[i]);
      if (!entry[1].is_none()) {
        states.emplace_back(masters[i], from_python(eng.options().optimizer, entry[1].cast<py::dict>(), masters[i], names[g][j]));
      }
    }
    param_groups.emplace_back(std::move(params), std::make_unique<optim::SGDOptions>(lrs[g]));
  }
  auto opt = holder(std::move(param_groups));
  for (auto& [p, st] : states) opt->state()[torch_compat::optim_state_key(p)] = std::move(st);
  py::gil_scoped_release nogil;
  ok_or_throw(eng.load_state_dict(*opt));
}

}  // namespace strata::python
