# Every dependency is a Debian package installed by scripts/setup.
find_package(Threads REQUIRED)
find_package(fmt REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(hwy REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(URING REQUIRED IMPORTED_TARGET liburing)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
if(STRATA_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()
if(STRATA_WITH_TORCH)
  find_package(Torch REQUIRED)
  find_package(CLI11 REQUIRED)
endif()

# One fmt for every source. Debian's LibTorch uses the system fmt; the pip wheels ship
# their own, newer fmt headers in torch/include, whose -isystem path comes before the
# system one, so the sources that see LibTorch's headers compile against that fmt. The
# version is fmt's inline namespace, so those sources would then miss their symbols in
# Debian's libfmt.so.9 (seen on the GPU machine, issue 19). With such a LibTorch, strata
# uses LibTorch's fmt everywhere, header-only: STRATA_FMT_INCLUDE_DIR (a copy of that
# fmt/ folder alone, so the torch-free core still sees no torch header) goes first.
set(STRATA_FMT_TARGET fmt::fmt)
set(STRATA_FMT_INCLUDE_DIR "")
if(STRATA_WITH_TORCH)
  get_target_property(_fmt_includes fmt::fmt INTERFACE_INCLUDE_DIRECTORIES)
  set(_fmt_real "")
  foreach(_dir IN LISTS _fmt_includes)
    file(REAL_PATH "${_dir}" _real)
    list(APPEND _fmt_real "${_real}")
  endforeach()
  foreach(_dir IN LISTS TORCH_INCLUDE_DIRS)
    file(REAL_PATH "${_dir}" _real)
    if(EXISTS "${_real}/fmt/format.h" AND NOT _real IN_LIST _fmt_real)
      if(NOT EXISTS "${_real}/fmt/format-inl.h")
        message(FATAL_ERROR "LibTorch's fmt (${_real}/fmt) lacks format-inl.h: it cannot be used header-only")
      endif()
      set(STRATA_FMT_INCLUDE_DIR "${CMAKE_BINARY_DIR}/torch-fmt")
      file(REMOVE_RECURSE "${STRATA_FMT_INCLUDE_DIR}")
      file(COPY "${_real}/fmt" DESTINATION "${STRATA_FMT_INCLUDE_DIR}")
      set(STRATA_FMT_TARGET fmt::fmt-header-only)
      message(STATUS "strata: fmt from LibTorch's headers (${_real}/fmt), header-only")
      break()
    endif()
  endforeach()
endif()
