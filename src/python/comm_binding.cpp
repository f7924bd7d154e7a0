// strata._strata.Communicator: strata's collectives over a process group, either one
// strata makes from the environment torchrun and `strata launch` set (RANK, WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT; comm/rendezvous.h), or the caller's own torch.distributed
// group, passed as the ProcessGroup object itself (the same c10d object in C++).
#include <chrono>
#include <optional>

#include <fmt/format.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/utils/pybind.h>

#include "bindings.h"
#include "errors.h"
#include "strata/comm/communicator.h"
#include "strata/comm/rendezvous.h"

namespace strata::python {
namespace py = pybind11;

namespace {

// Note [communicator teardown]: ~ProcessGroupGloo waits for its worker threads, and a
// worker finishing a work item destroys the item's tensors; a tensor that came from
// Python needs the GIL to drop its Python object. A communicator destroyed with the GIL
// held (its last Python reference gone, often at exit) and such a worker then wait on
// each other forever (seen: ShardedOptimizer's broadcasts, 1 run in about 10). The
// pointer Python gets destroys the communicator with the GIL released.
std::shared_ptr<comm::Communicator> released_on_teardown(std::shared_ptr<comm::Communicator> c) {
  comm::Communicator* raw = c.get();
  return std::shared_ptr<comm::Communicator>(raw, [owner = std::move(c)](comm::Communicator*) mutable {
    std::optional<py::gil_scoped_release> nogil;
    if (PyGILState_Check()) nogil.emplace();
    owner.reset();
  });
}

}  // namespace

void bind_comm(py::module_& m) {
  py::class_<comm::Communicator, std::shared_ptr<comm::Communicator>>(m, "Communicator")
      .def_static("from_env", [](double timeout_s) -> std::shared_ptr<comm::Communicator> {
        comm::CommOptions o;
        o.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(timeout_s * 1000));
        std::shared_ptr<comm::Communicator> c;
        {
          py::gil_scoped_release nogil;
          c = value_or_throw(comm::init_from_env(o));
        }
        return released_on_teardown(std::move(c));
      }, py::arg("timeout_s") = 300.0,
         "A Gloo group from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (a single rank when they are unset)")
      .def_static("from_process_group", [](py::object group, double timeout_s) -> std::shared_ptr<comm::Communicator> {
        c10::intrusive_ptr<c10d::ProcessGroup> pg;
        try {
          pg = group.cast<c10::intrusive_ptr<c10d::ProcessGroup>>();
        } catch (const py::cast_error&) {
          throw PyStrataError{Error(ErrorCode::kInvalidArgument, "process_group: expected a torch.distributed "
                                    "ProcessGroup, got " + std::string(py::str(group.get_type())))};
        }
        comm::CommOptions o;
        o.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(timeout_s * 1000));
        return released_on_teardown(value_or_throw(comm::Communicator::create(std::move(pg), o)));
      }, py::arg("group"), py::arg("timeout_s") = 300.0)
      .def_property("timeout_s", [](const comm::Communicator& c) { return c.timeout().count() / 1000.0; },
                    [](comm::Communicator& c, double timeout_s) {
                      if (!(timeout_s > 0)) {
                        throw PyStrataError{Error(ErrorCode::kInvalidArgument,
                                                  fmt::format("timeout_s must be positive, got {}", timeout_s))};
                      }
                      c.set_timeout(std::chrono::milliseconds(static_cast<std::int64_t>(timeout_s * 1000)));
                    }, "How long a collective may take before it fails (strata.comm_timeout_s)")
      .def_property_readonly("rank", &comm::Communicator::rank)
      .def_property_readonly("world", &comm::Communicator::world)
      .def("broadcast", [](comm::Communicator& c, const at::Tensor& t, int root) {
        py::gil_scoped_release nogil;
        ok_or_throw(c.broadcast(t, root).wait());
      }, py::arg("tensor"), py::arg("root") = 0, "In place: every rank gets root's values")
      .def("barrier", [](comm::Communicator& c) {
        py::gil_scoped_release nogil;
        ok_or_throw(c.barrier().wait());
      });
}

}  // namespace strata::python
