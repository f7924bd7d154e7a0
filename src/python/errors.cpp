#include "errors.h"

#include <pybind11/pybind11.h>

#include <fmt/format.h>

namespace strata::python {
namespace py = pybind11;

void register_errors() {
  py::register_exception_translator([](std::exception_ptr p) {
    if (!p) return;
    try {
      std::rethrow_exception(p);
    } catch (const PyStrataError& e) {
      // strata.errors owns the classes (several have two bases, which pybind11's
      // py::exception cannot make); it picks one by the code's name.
      const std::string text = fmt::format("{}", e.error);
      py::object cls = py::module_::import("strata.errors").attr("class_for")(std::string(to_string(e.error.code())));
      PyErr_SetObject(cls.ptr(), py::str(text).ptr());
    }
  });
}

}  // namespace strata::python
