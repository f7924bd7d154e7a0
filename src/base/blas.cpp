#include "strata/base/blas.h"

#include <dlfcn.h>

#include <filesystem>
#include <fstream>

namespace strata {
namespace {

std::string canonical(const std::string& path) {
  std::error_code ec;
  const auto real = std::filesystem::canonical(path, ec);
  return ec ? path : real.string();
}

// The library that provides sgemm_ in the default scope: what LibTorch's fp32 products
// call. (Checking only for OpenBLAS's symbols would mislead: Debian's liblapack.so.3 can
// load libopenblas while libblas.so.3, earlier in the search order, is the reference
// one.) Else, as in a process that loaded LibTorch with RTLD_LOCAL, the first mapped
// file whose name says it is a BLAS.
std::string loaded_blas_path() {
  Dl_info info{};
  if (void* gemm = ::dlsym(RTLD_DEFAULT, "sgemm_"); gemm != nullptr && ::dladdr(gemm, &info) != 0 &&
                                                     info.dli_fname != nullptr) {
    return canonical(info.dli_fname);
  }
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    const auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    const std::string file = std::filesystem::path(path).filename().string();
    if (file.starts_with("libblas.so") || file.starts_with("libopenblas") || file.starts_with("libblis") ||
        file.starts_with("libmkl_rt")) {
      return canonical(path);
    }
  }
  return {};
}

template <class Fn>
Fn symbol(const std::string& library, const char* name) {
  if (!library.empty()) {
    if (void* h = ::dlopen(library.c_str(), RTLD_LAZY | RTLD_NOLOAD)) {
      void* s = ::dlsym(h, name);
      ::dlclose(h);  // drops the reference NOLOAD took; the library stays loaded
      if (s != nullptr) return reinterpret_cast<Fn>(s);
    }
  }
  return reinterpret_cast<Fn>(::dlsym(RTLD_DEFAULT, name));
}

}  // namespace

BlasInfo detect_blas() {
  BlasInfo b;
  b.library = loaded_blas_path();
  if (b.library.empty()) {
    b.name = "none loaded";
    return b;
  }
  const std::string file = std::filesystem::path(b.library).filename().string();
  // Debian installs the reference BLAS under .../blas/ (package libblas3).
  const std::string dir = std::filesystem::path(b.library).parent_path().filename().string();
  b.optimized = true;
  if (file.find("openblas") != std::string::npos || dir.find("openblas") != std::string::npos) {
    b.name = "OpenBLAS";
    if (auto config = symbol<char* (*)()>(b.library, "openblas_get_config")) b.detail = config();
    if (auto threads = symbol<int (*)()>(b.library, "openblas_get_num_threads")) b.threads = threads();
  } else if (dir == "blas") {
    b.name = "reference BLAS";
    b.optimized = false;
  } else if (file.find("blis") != std::string::npos) {
    b.name = "BLIS";
  } else if (file.find("mkl") != std::string::npos) {
    b.name = "MKL";
  } else {
    b.name = file;  // not the reference one, whatever it is
  }
  return b;
}

void set_blas_threads(int n) {
  if (auto set = symbol<void (*)(int)>(loaded_blas_path(), "openblas_set_num_threads")) set(n);
}

}  // namespace strata
