#include "strata/engine/module_hooks.h"

#include <mutex>
#include <shared_mutex>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include "strata/engine/engine.h"
#include "strata/engine/uses_params.h"

namespace strata::engine {
namespace {

// Registered at setup, read on every unit call: a reader-writer lock keeps the hot
// path to one shared lock and a hash lookup.
struct Registry {
  std::shared_mutex mu;
  std::unordered_map<const torch::nn::Module*, UnitHook> hooks;
};
Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

void set_unit_hook(const torch::nn::Module& module, UnitHook hook) {
  auto& r = registry();
  std::unique_lock lock(r.mu);
  if (hook.engine == nullptr) r.hooks.erase(&module);
  else r.hooks[&module] = hook;
}

void clear_unit_hooks(const Engine* engine) {
  auto& r = registry();
  std::unique_lock lock(r.mu);
  std::erase_if(r.hooks, [engine](const auto& kv) { return kv.second.engine == engine; });
}

std::optional<UnitHook> unit_hook(const torch::nn::Module& module) {
  auto& r = registry();
  std::shared_lock lock(r.mu);
  auto it = r.hooks.find(&module);
  if (it == r.hooks.end()) return std::nullopt;
  return it->second;
}

ForwardError::ForwardError(strata::Error e)
    : c10::Error(c10::SourceLocation{__func__, __FILE__, static_cast<std::uint32_t>(__LINE__)}, e.to_string()),
      typed_(std::move(e)) {}

Error forward_error(const std::exception& e, std::string_view what) {
  if (const auto* fe = dynamic_cast<const ForwardError*>(&e)) return fe->typed();
  // A module's own TORCH_CHECK (a shape mismatch, say): its message, not its backtrace.
  const auto* ce = dynamic_cast<const c10::Error*>(&e);
  return Error(ErrorCode::kInternal, fmt::format("{}: {}", what, ce ? ce->what_without_backtrace() : e.what()));
}

void run_pre_forward(const UnitHook& hook) {
  if (Status st = hook.engine->pre_forward(hook.unit); !st) throw ForwardError(std::move(st).error());
}

void run_post_forward(const UnitHook& hook, std::span<const at::Tensor> outputs) {
  if (Status st = hook.engine->post_forward(hook.unit, outputs); !st) throw ForwardError(std::move(st).error());
}

std::vector<ModuleUnit> default_units(torch::nn::Module& model) {
  std::vector<ModuleUnit> units;
  for (const auto& child : model.named_children()) {
    std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> mods;
    if (auto* list = dynamic_cast<torch::nn::ModuleListImpl*>(child.value().get())) {
      for (const auto& sub : list->named_children()) mods.emplace_back(child.key() + "." + sub.key(), sub.value());
    } else {
      mods.emplace_back(child.key(), child.value());
    }
    for (auto& [name, m] : mods) {
      ModuleUnit u{.module = m, .name = name};
      if (auto* extra = dynamic_cast<UsesParams*>(m.get())) u.extra_params = extra->used_params();
      if (!m->parameters().empty() || !u.extra_params.empty()) units.push_back(std::move(u));
    }
  }
  return units;
}

Result<std::unique_ptr<Engine>> shard(torch::nn::Module& model, comm::Communicator& comm, EngineOptions options,
                                      std::vector<ModuleUnit> units, ParamInit init) {
  if (units.empty()) units = default_units(model);
  // The model's names for its parameters, for messages.
  std::unordered_map<const void*, std::string> names;
  for (const auto& p : model.named_parameters()) names.emplace(p.value().unsafeGetTensorImpl(), p.key());
  std::vector<UnitSpec> specs;
  std::unordered_set<const void*> covered;
  for (std::size_t u = 0; u < units.size(); ++u) {
    if (!units[u].module) return make_error(ErrorCode::kInvalidArgument, "unit {} has no module", u);
    UnitSpec spec{.name = units[u].name.empty() ? fmt::format("unit{}", u) : units[u].name, .leaf = units[u].leaf};
    std::vector<at::Tensor> ps = units[u].module->parameters(/*recurse=*/true);
    ps.insert(ps.end(), units[u].extra_params.begin(), units[u].extra_params.end());
    for (const at::Tensor& p : ps) {
      covered.insert(p.unsafeGetTensorImpl());
      auto it = names.find(p.unsafeGetTensorImpl());
      spec.param_names.push_back(it != names.end() ? it->second : "");
      spec.params.push_back(p);
    }
    specs.push_back(std::move(spec));
  }
  // Every parameter must be in a unit at stage 3, or nothing would gather it. Stages
  // 0-2 never gather: parameters outside the units join as one more unit.
  UnitSpec rest{.name = "(parameters outside the units)"};
  for (const auto& p : model.named_parameters()) {
    if (covered.contains(p.value().unsafeGetTensorImpl())) continue;
    if (options.stage == 3) {
      return make_error(ErrorCode::kInvalidArgument,
                        "parameter {} is not in any unit; call its module through strata::engine::forward() and "
                        "list it as a unit",
                        p.key());
    }
    rest.params.push_back(p.value());
    rest.param_names.push_back(p.key());
  }
  if (!rest.params.empty()) specs.push_back(std::move(rest));
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Engine> eng, Engine::create(std::move(specs), comm, std::move(options), std::move(init)));
  for (std::size_t u = 0; u < units.size(); ++u) {
    set_unit_hook(*units[u].module, UnitHook{.engine = eng.get(), .unit = static_cast<UnitId>(u)});
  }
  return eng;
}

}  // namespace strata::engine
