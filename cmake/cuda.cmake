# The GPU compute tier (docs/gpu.md): built when the LibTorch found has CUDA (its c10_cuda
# target), as the CUDA pip wheels do; Debian 12's LibTorch 1.13 is CPU-only, so CI and
# the development machines build without it. The sources that need CUDA are named
# *_cuda.cpp (scripts/torch2-check compiles them against 2.x headers without a GPU).
set(STRATA_CUDA AUTO CACHE STRING "GPU compute tier: AUTO (when LibTorch has CUDA), ON or OFF")
set(STRATA_NCCL_ROOT "" CACHE PATH "Where nccl.h is (include/) when not in the CUDA toolkit: pip's nvidia/nccl")

set(STRATA_CUDA_ENABLED OFF)
if(STRATA_WITH_TORCH)
  if(STRATA_CUDA STREQUAL "AUTO")
    if(TARGET c10_cuda)
      set(STRATA_CUDA_ENABLED ON)
    endif()
  elseif(STRATA_CUDA)
    if(NOT TARGET c10_cuda)
      message(FATAL_ERROR "STRATA_CUDA=ON, but the LibTorch found (${Torch_DIR}) was built without CUDA")
    endif()
    set(STRATA_CUDA_ENABLED ON)
  endif()
endif()

if(STRATA_CUDA_ENABLED)
  find_package(CUDAToolkit REQUIRED)
  # ProcessGroupNCCL.hpp includes nccl.h; the wheel's NCCL is a pip package of its own.
  find_path(STRATA_NCCL_INCLUDE_DIR nccl.h
    HINTS ${STRATA_NCCL_ROOT}/include ${CUDAToolkit_INCLUDE_DIRS} $ENV{NCCL_HOME}/include)
  if(NOT STRATA_NCCL_INCLUDE_DIR)
    message(FATAL_ERROR "nccl.h not found: set STRATA_NCCL_ROOT (for pip's NCCL: "
                        "python3 -c 'import nvidia.nccl; print(nvidia.nccl.__path__[0])')")
  endif()
  message(STATUS "strata: GPU compute tier on (CUDA ${CUDAToolkit_VERSION}, nccl.h in ${STRATA_NCCL_INCLUDE_DIR})")
else()
  message(STATUS "strata: GPU compute tier off (LibTorch without CUDA)")
endif()

# Adds CUDA-only sources to strata_torch (called by the layers' CMakeLists).
function(strata_cuda_sources)
  if(STRATA_CUDA_ENABLED)
    target_sources(strata_torch PRIVATE ${ARGN})
  endif()
endfunction()
