#include "strata/engine/module_hooks.h"

#include <mutex>
#include <shared_mutex>
#include <unordered_map>

namespace strata::engine {
namespace {

// Registered at setup, read on every unit call: a reader-writer lock keeps the hot
// path to one shared lock and a hash lookup.
struct Registry {
  std::shared_mutex mu;
  std::unordered_map<const torch::nn::Module*, ModuleHooks*> hooks;
};
Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

void set_module_hooks(const torch::nn::Module& unit, ModuleHooks* hooks) {
  auto& r = registry();
  std::unique_lock lock(r.mu);
  if (hooks == nullptr) r.hooks.erase(&unit);
  else r.hooks[&unit] = hooks;
}

ModuleHooks* module_hooks(const torch::nn::Module& unit) {
  auto& r = registry();
  std::shared_lock lock(r.mu);
  auto it = r.hooks.find(&unit);
  return it == r.hooks.end() ? nullptr : it->second;
}

}  // namespace strata::engine
