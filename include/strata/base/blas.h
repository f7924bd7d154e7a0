// Which BLAS this process's matrix products run on, and its threads.
//
//   BlasInfo b = detect_blas();   // b.name "OpenBLAS", b.optimized true, b.threads 1
//   set_blas_threads(n);          // each rank: its share of the cores
//
// Debian's LibTorch links libblas.so.3, which the alternatives system points at the
// reference (netlib) BLAS unless an optimized one is installed: fp32 training then runs
// an order of magnitude slower (docs/performance.md). detection looks at what the
// dynamic linker actually loaded (the resolved path of libblas in /proc/self/maps) and,
// for OpenBLAS, asks the library itself (openblas_get_config, openblas_get_num_threads,
// found with dlsym: strata does not link OpenBLAS). In a process that has not loaded a
// BLAS (no LibTorch), name is "none loaded".
#pragma once

#include <string>

namespace strata {

struct BlasInfo {
  std::string name;     // "OpenBLAS", "reference BLAS", "BLIS", "none loaded", or the library's file name
  std::string library;  // the resolved path of the loaded BLAS library; empty when none
  std::string detail;   // OpenBLAS: its build configuration ("OpenBLAS 0.3.21 DYNAMIC_ARCH ...")
  int threads = 0;      // OpenBLAS: the threads a product may use; 0 when unknown
  bool optimized = false;  // false for the reference BLAS and when none is loaded
};

BlasInfo detect_blas();

// OpenBLAS's thread count (its OpenMP build also sets OpenMP's); nothing for other BLAS.
void set_blas_threads(int n);

}  // namespace strata
