// The pieces of the _strata module, one per file.
#pragma once

#include <pybind11/pybind11.h>

namespace strata::python {

void bind_comm(pybind11::module_& m);
void bind_engine(pybind11::module_& m);

}  // namespace strata::python
