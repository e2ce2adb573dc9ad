# CUDA parts of the defmamba ops (included from plugins/CMakeLists.txt; CUDA itself is enabled in the
# top-level CMakeLists.txt, which sets DEFMAMBA_WITH_CUDA):
#
#   defmamba_cuda_kernels       STATIC  <op>/kernel.cu: the launchers of <op>/kernel.h (float / __half),
#                                       PIC, static CUDA runtime; linked by the ORT op library and by the
#                                       TensorRT plugins (trt.cmake).
#   defmamba_ort_ops            +=      <op>/ort_cuda_op.cpp: CUDA execution-provider kernels of the three
#                                       ops, registered by register_ort.cpp under DEFMAMBA_WITH_CUDA.
#   defmamba_cuda_test_abi      SHARED  cuda_test_abi.cu -> libdefmamba_cuda_kernels.so, the extern "C"
#                                       test ABI used by tests/test_cuda_kernels.py (not packaged).
#
# Accuracy: no --use_fast_math (IEEE division and sqrt, denormals kept); FMA contraction is nvcc's
# default, as in the CPU build (-ffp-contract=fast).
if(NOT DEFMAMBA_WITH_CUDA)
  return()
endif()

set(_dm_dir ${CMAKE_CURRENT_LIST_DIR})

# ---- kernels ---------------------------------------------------------------------------------------------
add_library(defmamba_cuda_kernels STATIC
  ${_dm_dir}/common/cuda_utils.cuh
  ${_dm_dir}/common/defmamba_math.h
  ${_dm_dir}/selective_scan/kernel.cu ${_dm_dir}/selective_scan/kernel.h
  ${_dm_dir}/deform_gather/kernel.cu ${_dm_dir}/deform_gather/kernel.h
  ${_dm_dir}/token_sort/kernel.cu ${_dm_dir}/token_sort/kernel.h)
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
  target_sources(defmamba_ort_ops PRIVATE
    ${_dm_dir}/common/ort_cuda_utils.h
    ${_dm_dir}/selective_scan/ort_cuda_op.cpp ${_dm_dir}/selective_scan/ort_cuda_op.h
    ${_dm_dir}/deform_gather/ort_cuda_op.cpp ${_dm_dir}/deform_gather/ort_cuda_op.h
    ${_dm_dir}/token_sort/ort_cuda_op.cpp ${_dm_dir}/token_sort/ort_cuda_op.h)
  target_compile_definitions(defmamba_ort_ops PRIVATE DEFMAMBA_WITH_CUDA)
  target_link_libraries(defmamba_ort_ops PRIVATE defmamba_cuda_kernels)
  if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
    # keep the static CUDA runtime's symbols private (no interposition with another libcudart)
    target_link_options(defmamba_ort_ops PRIVATE -Wl,--exclude-libs,ALL)
  endif()
endif()

# ---- C test ABI (tests/test_cuda_kernels.py) ---------------------------------------------------------------
add_library(defmamba_cuda_test_abi SHARED ${_dm_dir}/cuda_test_abi.cu)
set_target_properties(defmamba_cuda_test_abi PROPERTIES
  OUTPUT_NAME defmamba_cuda_kernels   # libdefmamba_cuda_kernels.so next to the static libdefmamba_cuda_kernels.a
  CUDA_RUNTIME_LIBRARY Static
  CUDA_STANDARD 17
  CUDA_VISIBILITY_PRESET hidden)
target_link_libraries(defmamba_cuda_test_abi PRIVATE defmamba_cuda_kernels)
if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
  target_link_options(defmamba_cuda_test_abi PRIVATE -Wl,--exclude-libs,ALL -Wl,--no-undefined)
endif()

message(STATUS "defmamba: CUDA kernels ON (defmamba_cuda_kernels, ORT CUDA-EP ops, test ABI "
               "libdefmamba_cuda_kernels.so); architectures ${CMAKE_CUDA_ARCHITECTURES}")
