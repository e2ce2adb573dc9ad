# CUDA targets of the defmamba ops (included from plugins/CMakeLists.txt; CUDA itself is enabled in the
# top-level CMakeLists.txt, which sets DEFMAMBA_WITH_CUDA). The op folders add their sources
# (defmamba_op_sources: CUDA -> <op>/kernel.cu, ORT_CUDA -> <op>/ort_cuda_op.cpp).
#
#   defmamba_cuda_kernels       STATIC  <op>/kernel.cu: the launchers of <op>/kernel.h (float / __half),
#                                       PIC, static CUDA runtime; linked by the ORT op library, the
#                                       TensorRT plugins (trt.cmake) and the CUDA test ABI (tests/).
#   defmamba_ort_ops            +=      <op>/ort_cuda_op.cpp: CUDA execution-provider kernels of the
#                                       ops, registered by register_ort.cpp under DEFMAMBA_WITH_CUDA.
#
# Accuracy: no --use_fast_math (IEEE division and sqrt, denormals kept); FMA contraction is nvcc's
# default, as in the CPU build (-ffp-contract=fast).
if(NOT DEFMAMBA_WITH_CUDA)
  return()
endif()

set(_dm_dir ${CMAKE_CURRENT_LIST_DIR})

# ---- kernels ---------------------------------------------------------------------------------------------
add_library(defmamba_cuda_kernels STATIC ${_dm_dir}/common/cuda_utils.cuh ${_dm_dir}/common/defmamba_math.h)
target_include_directories(defmamba_cuda_kernels PUBLIC
  ${_dm_dir}           # "selective_scan/kernel.h", ...
  ${_dm_dir}/common)   # "cuda_utils.cuh", "defmamba_math.h"
set_target_properties(defmamba_cuda_kernels PROPERTIES
  POSITION_INDEPENDENT_CODE ON
  CUDA_RUNTIME_LIBRARY Static
  CUDA_STANDARD 17
  CUDA_STANDARD_REQUIRED ON
  CUDA_SEPARABLE_COMPILATION OFF
  CUDA_VISIBILITY_PRESET hidden
  VISIBILITY_INLINES_HIDDEN ON)
target_compile_options(defmamba_cuda_kernels PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-Xptxas=-O3 -Xcompiler=-Wall>)
# the launchers' callers are host C++ (ORT ops, TensorRT plugins): they need the CUDA headers and runtime
target_link_libraries(defmamba_cuda_kernels PUBLIC CUDA::cudart_static)

# ---- ORT CUDA execution-provider ops -----------------------------------------------------------------------
if(DEFMAMBA_BUILD_ORT AND TARGET defmamba_ort_ops)
  target_sources(defmamba_ort_ops PRIVATE ${_dm_dir}/common/ort_cuda_utils.h)
  target_compile_definitions(defmamba_ort_ops PRIVATE DEFMAMBA_WITH_CUDA)
  target_link_libraries(defmamba_ort_ops PRIVATE defmamba_cuda_kernels)
  if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
    # keep the static CUDA runtime's symbols private (no interposition with another libcudart)
    target_link_options(defmamba_ort_ops PRIVATE -Wl,--exclude-libs,ALL)
  endif()
endif()

message(STATUS "defmamba: CUDA kernels ON (defmamba_cuda_kernels, ORT CUDA-EP ops, test ABI "
               "libdefmamba_cuda_kernels.so from plugins/tests); architectures ${CMAKE_CUDA_ARCHITECTURES}")
