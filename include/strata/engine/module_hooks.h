// Forward hooks for C++ modules.
//
// LibTorch's C++ torch::nn::Module has no forward hooks, so strata's unit boundaries
// are calls through strata::engine::forward():
//
//   struct GPTImpl : torch::nn::Module {
//     at::Tensor forward(at::Tensor x) {
//       for (auto& block : blocks) x = strata::engine::forward(block, x);  // was: block(x)
//       ...
//
// With no engine attached this is exactly module->forward(args...). Once an engine
// shards the model (strata::shard(model, engine)), it registers its units here and
// forward() runs pre_forward (gather the unit's chunks) and post_forward (release them,
// hook the output so backward re-gathers) around the call.
#pragma once

#include <utility>

#include <ATen/core/Tensor.h>

namespace torch::nn {
class Module;
}

namespace strata::engine {

class ModuleHooks {
 public:
  virtual ~ModuleHooks() = default;
  virtual void pre_forward(const torch::nn::Module& unit) = 0;
  // May replace `output` (e.g. with a tensor carrying a backward hook).
  virtual void post_forward(const torch::nn::Module& unit, at::Tensor& output) = 0;
};

// Registers (or, with nullptr, removes) the hooks for one unit module.
void set_module_hooks(const torch::nn::Module& unit, ModuleHooks* hooks);
ModuleHooks* module_hooks(const torch::nn::Module& unit);

template <class Holder, class... Args>
at::Tensor forward(Holder& module, Args&&... args) {
  ModuleHooks* hooks = module_hooks(*module);
  if (hooks == nullptr) return module->forward(std::forward<Args>(args)...);
  hooks->pre_forward(*module);
  at::Tensor out = module->forward(std::forward<Args>(args)...);
  hooks->post_forward(*module, out);
  return out;
}

}  // namespace strata::engine
