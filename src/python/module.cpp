// The _strata extension module: the C++ engine, communicator and checkpoints for the
// pure-Python package `strata` (python/strata/), which is what users import.
#include <torch/csrc/utils/pybind.h>

#include "bindings.h"
#include "errors.h"

PYBIND11_MODULE(_strata, m) {
  m.doc() = "strata's C++ engine (use the strata package, not this module)";
  m.attr("__version__") = STRATA_VERSION;
  strata::python::register_errors();
  strata::python::bind_comm(m);
  strata::python::bind_engine(m);
}
