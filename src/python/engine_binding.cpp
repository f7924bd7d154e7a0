// strata._strata.Engine: the C++ engine behind the Python front ends (strata.initialize,
// strata.fully_shard). Units are lists of the model's own parameter tensors (the same
// TensorImpls Python holds, so the engine's gathers and releases show in Python); the
// Python forward hooks call pre_forward / post_forward (Note [front ends] in engine.h).
// Calls that may wait on peers or disks release the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <optional>
#include <tuple>

#include <ATen/Functions.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/utils/pybind.h>

#include <nlohmann/json.hpp>

#include "bindings.h"
#include "errors.h"
#include "optimizer_state.h"
#include "py_optimizer.h"
#include "strata/base/config.h"
#include "strata/ckpt/checkpoint.h"
#include "strata/comm/communicator.h"
#include "strata/engine/engine.h"

namespace strata::python {
namespace py = pybind11;
namespace fs = std::filesystem;
using engine::Engine;

namespace {

// The engine and the communicator it uses, kept alive together.
struct PyEngine {
  std::shared_ptr<comm::Communicator> comm;
  std::unique_ptr<Engine> eng;
  PyOptimizer* wrapped = nullptr;  // owned by eng, when a Python optimizer steps
  // Returns the model's persistent buffers as [(name, tensor)], asked at each checkpoint
  // save and load (a module may replace a buffer's tensor between them); None: no buffers.
  py::object buffer_source = py::none();
  // The config's batch triple resolved at this world size (Config::resolve_batch).
  std::int64_t train_batch = 0, micro_batch = 0, accumulation = 0;
};

// The buffers a checkpoint saves or fills (ckpt::SaveOptions::buffers). Needs the GIL.
std::vector<ckpt::NamedBuffer> buffers_of(const PyEngine& e) {
  std::vector<ckpt::NamedBuffer> out;
  if (e.buffer_source.is_none()) return out;
  for (py::handle item : e.buffer_source()) {
    auto pair = item.cast<std::pair<std::string, at::Tensor>>();
    out.push_back({.name = std::move(pair.first), .value = std::move(pair.second)});
  }
  return out;
}

// wrap: (group of each engine parameter, number of groups, make(groups, slices)) for a
// Python optimizer over this rank's master shards (py_optimizer.h), or None.
using Wrap = std::optional<std::tuple<std::vector<int>, int, py::object>>;
// Note [parameter groups]: (parameters, lr or None, weight decay or None) per group; a
// group's lr becomes a multiple of the optimizer's (the config's, which a schedule moves).
using Groups = std::vector<std::tuple<std::vector<at::Tensor>, std::optional<double>, std::optional<double>>>;

py::dict links(const plan::LinkBytes& l) {
  py::dict d;
  d["host_to_compute"] = l.host_to_compute;
  d["compute_to_host"] = l.compute_to_host;
  d["nvme_to_host"] = l.nvme_to_host;
  d["host_to_nvme"] = l.host_to_nvme;
  d["net_gather"] = l.net_gather;
  d["net_reduce_scatter"] = l.net_reduce_scatter;
  d["net_all_reduce"] = l.net_all_reduce;
  return d;
}

// The optimizer a config resolves to, defaults filled in, by torch.optim's names (the
// Python side checks parameter groups against it: _groups.py).
py::dict optimizer_settings(const std::string& config_json) {
  std::vector<std::string> warnings;
  const OptimizerConfig o = value_or_throw(Config::parse(config_json, "config", &warnings)).optimizer;
  py::dict d;
  d["type"] = std::string(to_string(o.type));
  d["lr"] = o.lr;
  d["betas"] = py::make_tuple(o.betas[0], o.betas[1]);
  d["eps"] = o.eps;
  d["weight_decay"] = o.weight_decay;
  d["amsgrad"] = o.amsgrad;
  d["momentum"] = o.momentum;
  d["dampening"] = o.dampening;
  d["nesterov"] = o.nesterov;
  d["lr_decay"] = o.lr_decay;
  d["initial_accumulator_value"] = o.initial_accumulator_value;
  d["max_coeff"] = o.max_coeff;
  d["min_coeff"] = o.min_coeff;
  d["bias_correction"] = o.bias_correction;
  return d;
}

py::dict metrics(const engine::StepMetrics& m) {
  py::dict d;
  d["step"] = m.step;
  d["moved"] = links(m.moved);
  d["planned"] = links(m.planned);
  d["peak"] = py::dict(py::arg("compute") = m.peak[0], py::arg("host") = m.peak[1], py::arg("nvme") = m.peak[2]);
  d["peak_grad_bytes"] = m.peak_grad_bytes;
  d["peak_gathered_bytes"] = m.peak_gathered_bytes;
  d["gathers"] = m.gathers;
  d["prefetch_hits"] = m.prefetch_hits;
  d["prefetch_hit_rate"] = m.prefetch_hit_rate;
  d["gather_wait_s"] = m.gather_wait_s;
  d["forward_s"] = m.forward_s;
  d["backward_s"] = m.backward_s;
  d["optimizer_s"] = m.optimizer_s;
  d["scheduled"] = m.scheduled;
  d["trace_invalidations"] = m.trace_invalidations;
  return d;
}

py::dict memory(const engine::MemoryByKind& m) {
  static constexpr const char* kTiers[] = {"compute", "host", "nvme"};
  py::dict out;
  for (std::size_t t = 0; t < plan::kNumTiers; ++t) {
    py::dict kinds;
    for (plan::StateKind k : plan::kAllStateKinds) kinds[py::str(std::string(to_string(k)))] = m[t][plan::kind_index(k)];
    out[kTiers[t]] = kinds;
  }
  return out;
}

std::unique_ptr<PyEngine> create(std::vector<std::tuple<std::string, std::vector<at::Tensor>, std::vector<std::string>, bool>> units,
                                 std::shared_ptr<comm::Communicator> comm, const std::string& config_json, Wrap wrap,
                                 Groups groups, py::object init) {
  std::vector<std::string> warnings;
  Config cfg = value_or_throw(Config::parse(config_json, "config", &warnings));
  ok_or_throw(cfg.resolve_batch(comm->world()));
  engine::EngineOptions o = value_or_throw(engine::EngineOptions::from_config(cfg, comm->world()));
  for (auto& [params, lr, decay] : groups) {
    if (lr && *lr != o.optimizer.lr && o.optimizer.lr <= 0) {
      throw PyStrataError{Error(ErrorCode::kInvalidArgument, fmt::format(
          "a parameter group's lr ({}) is a multiple of the optimizer's, which is {}: give the optimizer an lr > 0",
          *lr, o.optimizer.lr))};
    }
    const double scale = lr && *lr != o.optimizer.lr ? *lr / o.optimizer.lr : 1.0;
    o.param_groups.push_back({.params = std::move(params), .lr_scale = scale, .weight_decay = decay});
  }
  std::vector<engine::UnitSpec> specs;
  for (auto& [name, params, names, leaf] : units)
    specs.push_back({.name = name, .params = std::move(params), .param_names = std::move(names), .leaf = leaf});
  auto out = std::make_unique<PyEngine>();
  out->comm = std::move(comm);
  out->train_batch = cfg.train_batch_size;
  out->micro_batch = cfg.train_micro_batch_size_per_gpu;
  out->accumulation = cfg.gradient_accumulation_steps;
  if (wrap) {
    o.wrap = [e = out.get()](std::vector<at::Tensor> shards) {
      auto opt = std::make_unique<PyOptimizer>(std::move(shards));
      e->wrapped = opt.get();
      return std::unique_ptr<torch::optim::Optimizer>(std::move(opt));
    };
  }
  // A deferred parameter's values (python/strata/_deferred.py), made when setup fills its
  // chunk. Setup runs without the GIL and copies the function: it holds a borrowed handle
  // (`init` outlives the call) and takes the GIL only to call it. A Python exception goes
  // up through setup, which unwinds (RAII), and reaches the caller as it was raised.
  engine::ParamInit param_init;
  if (!init.is_none()) {
    param_init = [fn = py::handle(init)](const at::Tensor& param, at::Tensor& out) {
      py::gil_scoped_acquire gil;
      fn(param, out);
    };
  }
  {
    py::gil_scoped_release nogil;
    out->eng = value_or_throw(Engine::create(std::move(specs), *out->comm, std::move(o), std::move(param_init)));
  }
  if (wrap) {
    auto& [group_of, n_groups, make] = *wrap;
    out->wrapped->build(*out->eng, group_of, n_groups, make);
  }
  return out;
}

Engine& live(PyEngine& e) {
  if (!e.eng) throw PyStrataError{Error(ErrorCode::kFailedPrecondition, "the engine was closed")};
  return *e.eng;
}

}  // namespace

void bind_engine(py::module_& m) {
  m.def("optimizer_settings", &optimizer_settings, py::arg("config_json"),
        "the optimizer a config resolves to, defaults filled in, by torch.optim's names");
  py::class_<PyEngine>(m, "Engine")
      .def(py::init(&create), py::arg("units"), py::arg("comm"), py::arg("config_json"), py::arg("wrap") = py::none(),
           py::arg("param_groups") = Groups{}, py::arg("init") = py::none(),
           "units: (name, parameters, parameter names) per unit; config_json: a DeepSpeed-style config; wrap: "
           "(group of each parameter, number of groups, make(groups, slices)) for a Python optimizer; param_groups: "
           "(parameters, lr or None, weight decay or None) per group of the built-in optimizer; init: "
           "init(param, out) fills the fp32 tensor out with the values of a parameter that holds none (deferred)")
      .def_property_readonly("wrapped_optimizer", [](PyEngine& e) {
        return e.wrapped ? e.wrapped->optimizer() : py::object(py::none());
      })
      .def("pre_forward", [](PyEngine& e, int unit) {
        py::gil_scoped_release nogil;
        ok_or_throw(live(e).pre_forward(unit));
      })
      .def("abort_forward", [](PyEngine& e) {
        py::gil_scoped_release nogil;
        ok_or_throw(live(e).abort_forward());
      })
      .def("adopt_param", [](PyEngine& e, const at::Tensor& param) {
        py::gil_scoped_release nogil;
        return value_or_throw(live(e).adopt_param(param));
      })
      .def("post_forward", [](PyEngine& e, int unit, const std::vector<at::Tensor>& outputs) {
        // Without the GIL, as every engine call: an engine thread that drops the last
        // C++ reference to a tensor Python once held decrefs its PyObject, which takes the
        // GIL; holding it here while the engine waits on that thread would deadlock.
        py::gil_scoped_release nogil;
        ok_or_throw(live(e).post_forward(unit, outputs));
      })
      .def("backward", [](PyEngine& e, const at::Tensor& loss, bool retain_graph, bool scale_wrt_gas) {
        Status st = ok();
        std::exception_ptr raised;
        {
          py::gil_scoped_release nogil;
          st = live(e).backward(loss, {.retain_graph = retain_graph, .scale_by_window = scale_wrt_gas});
          if (!st) raised = live(e).take_backward_exception();
        }
        // Note [the model's exceptions]: what the model's backward raised reaches the
        // caller as a plain loss.backward() raises it (a Python exception restored).
        if (raised) {
          torch::translate_exception_to_python(raised);
          throw py::error_already_set();
        }
        ok_or_throw(std::move(st));
      }, py::arg("loss"), py::arg("retain_graph") = false, py::arg("scale_wrt_gas") = true)
      .def("zero_grad", [](PyEngine& e) {
        py::gil_scoped_release nogil;
        ok_or_throw(live(e).zero_grad());
      })
      .def("step", [](PyEngine& e) {
        engine::StepResult r;
        {
          py::gil_scoped_release nogil;
          r = value_or_throw(live(e).step());
        }
        return py::dict(py::arg("boundary") = r.boundary, py::arg("applied") = r.applied,
                        py::arg("grad_norm") = r.grad_norm, py::arg("loss_scale") = r.loss_scale, py::arg("step") = r.step);
      })
      .def("clip_grad_norm", [](PyEngine& e, double max_norm, double norm_type) {
        py::gil_scoped_release nogil;
        return value_or_throw(live(e).clip_grad_norm(max_norm, norm_type));
      }, py::arg("max_norm"), py::arg("norm_type") = 2.0)
      .def("gather_params", [](PyEngine& e, const std::vector<at::Tensor>& params) {
        py::gil_scoped_release nogil;
        return value_or_throw(live(e).gather_params(params));
      }, "Note [gathered parameters]: the full fp32 values of params (collective)")
      .def("release_params", [](PyEngine& e, const std::vector<at::Tensor>& params,
                                const std::vector<at::Tensor>& values) {
        py::gil_scoped_release nogil;
        ok_or_throw(live(e).release_params(params, values));
      }, "values: taken into the parameters' masters and shards on this rank (empty: none)")
      .def("consolidated_params", [](PyEngine& e) {
        py::gil_scoped_release nogil;
        return value_or_throw(live(e).consolidated_params());
      })
      .def("any_rank", [](PyEngine& e, bool flag) {
        at::Tensor t = at::full({1}, flag ? 1.0F : 0.0F);
        py::gil_scoped_release nogil;
        ok_or_throw(e.comm->all_reduce(t, comm::ReduceOp::kMax).wait());
        return t.item<float>() > 0.5F;
      }, py::arg("flag"), "whether any rank's flag is true (collective): a decision every rank takes alike")
      .def("optimizer_state", [](PyEngine& e) { return optimizer_state(live(e), *e.comm); },
           "Note [optimizer state dicts]: every rank, the whole state: [[state or None per trainable parameter, "
           "params() order] per group] (collective)")
      .def("load_optimizer_state", [](PyEngine& e, const py::list& groups, const std::vector<std::vector<std::string>>& names) {
        load_optimizer_state(live(e), groups, names);
      }, py::arg("groups"), py::arg("names"),
         "per group [(engine parameter index, state or None)], the same on every rank (collective)")
      .def("save_checkpoint", [](PyEngine& e, const fs::path& root, std::int64_t step, const std::string& client_json,
                                 const std::string& config_json, int keep, bool update_latest) {
        ckpt::SaveOptions o{.root = root, .step = step, .keep = keep, .update_latest = update_latest,
                            .config = nlohmann::json::parse(config_json.empty() ? "null" : config_json),
                            .client = nlohmann::json::parse(client_json.empty() ? "null" : client_json),
                            .buffers = buffers_of(e)};
        py::gil_scoped_release nogil;
        return value_or_throw(ckpt::save_checkpoint(live(e), o));
      }, py::arg("root"), py::arg("step") = -1, py::arg("client_json") = "", py::arg("config_json") = "", py::arg("keep") = 0,
         py::arg("update_latest") = true)
      .def("load_checkpoint", [](PyEngine& e, const fs::path& path, bool optimizer_states, bool module_only) {
        ckpt::Loaded l;
        ckpt::LoadOptions o{.optimizer_states = optimizer_states, .module_only = module_only, .buffers = buffers_of(e)};
        {
          py::gil_scoped_release nogil;
          l = value_or_throw(ckpt::load_checkpoint(live(e), path, o));
        }
        return py::make_tuple(l.dir, l.meta.step, l.meta.client.dump());
      }, py::arg("path"), py::arg("optimizer_states") = true, py::arg("module_only") = false)
      .def("set_buffer_source", [](PyEngine& e, py::object source) { e.buffer_source = std::move(source); },
           py::arg("source"))
      .def_property_readonly("steps", [](PyEngine& e) { return live(e).steps(); })
      .def_property_readonly("at_boundary", [](PyEngine& e) { return live(e).at_boundary(); })
      .def("set_boundary", [](PyEngine& e, std::optional<bool> is_boundary) { live(e).set_boundary(is_boundary); })
      .def_property_readonly("stage", [](PyEngine& e) { return live(e).stage(); })
      .def_property_readonly("params", [](PyEngine& e) { return live(e).params(); })
      .def_property_readonly("param_names", [](PyEngine& e) { return live(e).param_names(); })
      .def_property("lr", [](PyEngine& e) { return live(e).lr(); }, [](PyEngine& e, double lr) { live(e).set_lr(lr); })
      .def_property(
          "group_lrs", [](PyEngine& e) { return live(e).group_lrs(); },
          [](PyEngine& e, const std::vector<double>& lrs) { ok_or_throw(live(e).set_group_lrs(lrs)); })
      .def_property(
          "group_weight_decays", [](PyEngine& e) { return live(e).group_weight_decays(); },
          [](PyEngine& e, const std::vector<double>& d) { ok_or_throw(live(e).set_group_weight_decays(d)); })
      .def_property(
          "betas",
          [](PyEngine& e) -> py::object {
            auto b = live(e).betas();
            return b ? py::object(py::make_tuple((*b)[0], (*b)[1])) : py::object(py::none());
          },
          [](PyEngine& e, std::array<double, 2> b) { ok_or_throw(live(e).set_betas(b)); })
      .def_property(
          "momentum", [](PyEngine& e) { return live(e).momentum(); },  // None without momentum
          [](PyEngine& e, double mo) { ok_or_throw(live(e).set_momentum(mo)); })
      .def_property_readonly("batch", [](PyEngine& e) {
        return py::dict(py::arg("train_batch_size") = e.train_batch, py::arg("train_micro_batch_size_per_gpu") = e.micro_batch,
                        py::arg("gradient_accumulation_steps") = e.accumulation);
      })
      .def_property_readonly("world", [](PyEngine& e) { return e.comm->world(); })
      .def_property_readonly("rank", [](PyEngine& e) { return e.comm->rank(); })
      .def("memory_by_kind", [](PyEngine& e) { return memory(live(e).memory_by_kind()); })
      .def("last_metrics", [](PyEngine& e) { return metrics(live(e).last_metrics()); })
      .def("trace_next_step", [](PyEngine& e, std::string path) { live(e).trace_next_step(std::move(path)); })
      .def("close", [](PyEngine& e) {
        py::gil_scoped_release nogil;
        e.eng.reset();
      }, "Releases the engine: its swap files and reservations go, the parameters keep their last values");
}

}  // namespace strata::python
