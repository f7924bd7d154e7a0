// The C++ front end: units are torch::nn modules called through engine::forward().
//
// LibTorch's C++ torch::nn::Module has no forward hooks, so a unit boundary is a call
// through strata::engine::forward():
//
//   struct GPTImpl : torch::nn::Module {
//     at::Tensor forward(at::Tensor x) {
//       for (std::size_t i = 0; i < blocks->size(); ++i)
//         x = strata::engine::forward_as<BlockImpl>(blocks[i], x);   // was: blocks[i](x)
//       return strata::engine::forward(head, x);                     // was: head(x)
//     ...
//   STRATA_ASSIGN_OR_RETURN(auto eng, strata::engine::shard(*model, *comm, options));
//
// With no engine attached, forward() is exactly module->forward(args...). Once shard()
// has made a module a unit, forward() calls the engine's pre_forward before it and
// post_forward with every tensor the module returned (a tensor, a tuple or pair of
// them, or a vector) after it. An engine error inside forward() is thrown as a
// ForwardError: a c10::Error with the error's text, so LibTorch code and Python see
// their own exception type, which keeps the typed Error for C++ callers:
//
//   try { loss = model->loss(x, y); }
//   catch (const std::exception& e) { return make_error(engine::forward_error(e, "forward")); }
//
// A unit whose forward computes with a parameter of a module it does not hold (a
// sibling's weight, an embedding used as the head) calls engine->adopt_param(p) before
// using it: at stage 3 it is gathered there, and the unit holds it from then on (Note
// [adopted parameters] in src/engine/access_driver.h; the Python front end does this by
// itself).
//
// Destroying the engine detaches its units.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "strata/base/status.h"
#include "strata/engine/deferred_init.h"
#include "strata/engine/engine_options.h"

namespace torch::nn {
class Module;
}
namespace strata::comm {
class Communicator;
}

namespace strata::engine {

class Engine;
using UnitId = int;

// Which engine unit a module is.
struct UnitHook {
  Engine* engine = nullptr;
  UnitId unit = 0;
};
void set_unit_hook(const torch::nn::Module& module, UnitHook hook);  // engine null: remove
void clear_unit_hooks(const Engine* engine);                         // every module of `engine`
std::optional<UnitHook> unit_hook(const torch::nn::Module& module);
// What forward() throws for an engine error.
class ForwardError : public c10::Error {
 public:
  explicit ForwardError(strata::Error e);
  const strata::Error& typed() const { return typed_; }

 private:
  strata::Error typed_;
};
// The typed error behind an exception from a forward through units: a ForwardError's
// own (a lost peer stays `unavailable`), else `e`'s text as internal, `what` prefixed.
Error forward_error(const std::exception& e, std::string_view what);

// Call the engine; an error is thrown as a ForwardError.
void run_pre_forward(const UnitHook& hook);
void run_post_forward(const UnitHook& hook, std::span<const at::Tensor> outputs);

namespace detail {
inline void collect_tensors(const at::Tensor& t, std::vector<at::Tensor>& out) { out.push_back(t); }
inline void collect_tensors(const std::vector<at::Tensor>& v, std::vector<at::Tensor>& out) {
  out.insert(out.end(), v.begin(), v.end());
}
template <class A, class B>
void collect_tensors(const std::pair<A, B>& p, std::vector<at::Tensor>& out);
template <class... T>
void collect_tensors(const std::tuple<T...>& t, std::vector<at::Tensor>& out) {
  std::apply([&out](const auto&... x) { (collect_tensors(x, out), ...); }, t);
}
template <class A, class B>
void collect_tensors(const std::pair<A, B>& p, std::vector<at::Tensor>& out) {
  collect_tensors(p.first, out);
  collect_tensors(p.second, out);
}
template <class T>
void collect_tensors(const T&, std::vector<at::Tensor>&) {}  // not a tensor: nothing to hook
}  // namespace detail

template <class Holder, class... Args>
auto forward(Holder& module, Args&&... args) -> decltype(module->forward(std::forward<Args>(args)...)) {
  const std::optional<UnitHook> hook = unit_hook(*module);
  if (!hook) return module->forward(std::forward<Args>(args)...);
  run_pre_forward(*hook);
  auto out = module->forward(std::forward<Args>(args)...);
  std::vector<at::Tensor> tensors;
  detail::collect_tensors(out, tensors);
  run_post_forward(*hook, tensors);
  return out;
}

// A type-erased module (a ModuleList or ModuleDict element) called as `Impl`.
template <class Impl, class... Args>
auto forward_as(const std::shared_ptr<torch::nn::Module>& module, Args&&... args) {
  std::shared_ptr<Impl> typed = std::dynamic_pointer_cast<Impl>(module);
  TORCH_CHECK(typed != nullptr, "strata::engine::forward_as: the module is not of the requested type");
  return forward(typed, std::forward<Args>(args)...);
}

// A unit of a C++ model: a module at any depth, plus any parameter it reads without
// owning it (GPT's tied head reads the token embedding; see uses_params.h).
struct ModuleUnit {
  std::shared_ptr<torch::nn::Module> module;
  std::vector<at::Tensor> extra_params;
  std::string name;
  // The module's calls of units inside it are gathered with it (UnitSpec::leaf): code
  // inside it may take other paths on other ranks at stage 3 (a mixture of experts).
  bool leaf = false;
};

// Every child module of `model` that holds parameters, ModuleLists flattened, with the
// parameters it declares through UsesParams.
std::vector<ModuleUnit> default_units(torch::nn::Module& model);

// Makes `units` (default: default_units(model)) the engine's units and attaches them.
// At stage 3 every trainable parameter must be in a unit, or nothing would gather it;
// at stages 0-2 parameters outside the units are managed as well.
// `init` makes the values of deferred parameters (deferred_init.h).
Result<std::unique_ptr<Engine>> shard(torch::nn::Module& model, comm::Communicator& comm, EngineOptions options,
                                      std::vector<ModuleUnit> units = {}, ParamInit init = {});

}  // namespace strata::engine
