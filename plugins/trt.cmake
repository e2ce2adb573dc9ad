# TensorRT plugin library libdefmamba_trt_plugins.so (included from plugins/CMakeLists.txt after cuda.cmake).
#
#   register_trt.cpp here + <op>/trt_plugin.cpp from each op folder (defmamba_op_sources: TRT), g++;
#   IPluginV3 plugins calling the launchers of <op>/kernel.h, linked with the static CUDA kernels
#   (defmamba_cuda_kernels) and the static CUDA runtime.
#
# Only TensorRT's headers are needed: the library is not linked against libnvinfer (-Wl,--no-undefined
# proves that it uses no libnvinfer symbol); TensorRT loads it with IPluginRegistry::loadLibrary and calls
# its getCreators().
#
# Options:
#   DEFMAMBA_BUILD_TRT  AUTO (default: build when TensorRT headers and the CUDA kernels are available, else
#                       say why not), ON (missing pieces are an error), OFF.
#   TENSORRT_ROOT       a TensorRT install (SDK/tar); its include/ must hold NvInferRuntime.h. Default: the
#                       environment variable TENSORRT_ROOT. Without it: .deps/tensorrt/include (fetched by
#                       scripts/fetch_trt_headers.sh), then the system include paths (libnvinfer-dev).
#                       pip-installed `tensorrt` ships no headers (NVIDIA/TensorRT#4310), so it is not searched.
# Defines for plugins/tests: DEFMAMBA_TRT_INCLUDE_DIRS (TensorRT + CUDA headers) when the library is built.

set(DEFMAMBA_BUILD_TRT "AUTO" CACHE STRING
    "Build the TensorRT plugin library libdefmamba_trt_plugins: AUTO (when TensorRT headers and the CUDA kernels exist), ON, OFF")
set_property(CACHE DEFMAMBA_BUILD_TRT PROPERTY STRINGS AUTO ON OFF)
set(TENSORRT_ROOT "$ENV{TENSORRT_ROOT}" CACHE PATH "TensorRT installation whose include/ holds NvInferRuntime.h (optional)")

string(TOUPPER "${DEFMAMBA_BUILD_TRT}" _dm_trt_mode)
if(_dm_trt_mode MATCHES "^(ON|YES|TRUE|Y|1)$")
  set(_dm_trt_mode ON)
elseif(_dm_trt_mode MATCHES "^(OFF|NO|FALSE|N|0)$")
  set(_dm_trt_mode OFF)
elseif(NOT _dm_trt_mode STREQUAL "AUTO")
  message(FATAL_ERROR "DEFMAMBA_BUILD_TRT must be AUTO, ON or OFF (got '${DEFMAMBA_BUILD_TRT}')")
endif()

set(DEFMAMBA_TRT_BUILT OFF)
set(DEFMAMBA_TRT_INCLUDE_DIRS "")

# ---- what is missing? -------------------------------------------------------------------------------------
set(_dm_trt_missing "")
set(_dm_trt_inc "")
if(NOT _dm_trt_mode STREQUAL "OFF")
  # 1. TensorRT headers
  if(TENSORRT_ROOT)
    if(EXISTS "${TENSORRT_ROOT}/include/NvInferRuntime.h")
      set(_dm_trt_inc "${TENSORRT_ROOT}/include")
    else()
      list(APPEND _dm_trt_missing "TENSORRT_ROOT=${TENSORRT_ROOT} has no include/NvInferRuntime.h")
    endif()
  elseif(EXISTS "${PROJECT_SOURCE_DIR}/.deps/tensorrt/include/NvInferRuntime.h")
    set(_dm_trt_inc "${PROJECT_SOURCE_DIR}/.deps/tensorrt/include")
  else()
    find_path(DEFMAMBA_TRT_SYSTEM_INCLUDE_DIR NvInferRuntime.h
              PATHS /usr/include/${CMAKE_LIBRARY_ARCHITECTURE} /usr/local/TensorRT/include /opt/tensorrt/include
              DOC "TensorRT headers found on the system (used when TENSORRT_ROOT and .deps/tensorrt are absent)")
    if(DEFMAMBA_TRT_SYSTEM_INCLUDE_DIR)
      set(_dm_trt_inc "${DEFMAMBA_TRT_SYSTEM_INCLUDE_DIR}")
    else()
      list(APPEND _dm_trt_missing
           "no TensorRT headers (run `bash scripts/fetch_trt_headers.sh`, or pass -DTENSORRT_ROOT=<TensorRT dir>)")
    endif()
  endif()
  if(_dm_trt_inc)
    set(_dm_trt_version "")
    if(EXISTS "${_dm_trt_inc}/NvInferVersion.h")
      file(STRINGS "${_dm_trt_inc}/NvInferVersion.h" _dm_trt_vlines
           REGEX "^#define (TRT_(MAJOR|MINOR|PATCH)_ENTERPRISE|NV_TENSORRT_(MAJOR|MINOR|PATCH)) +[0-9]+")
      foreach(_part MAJOR MINOR PATCH)
        set(_dm_trt_${_part} "")
        foreach(_line IN LISTS _dm_trt_vlines)
          if(_line MATCHES "^#define (TRT_${_part}_ENTERPRISE|NV_TENSORRT_${_part}) +([0-9]+)")
            set(_dm_trt_${_part} "${CMAKE_MATCH_2}")
          endif()
        endforeach()
      endforeach()
      set(_dm_trt_version "${_dm_trt_MAJOR}.${_dm_trt_MINOR}.${_dm_trt_PATCH}")
    endif()
    if(NOT _dm_trt_MAJOR OR _dm_trt_MAJOR LESS 10)
      list(APPEND _dm_trt_missing "TensorRT headers in ${_dm_trt_inc} are version '${_dm_trt_version}'; IPluginV3 needs >= 10")
    endif()
  endif()

  # 2. CUDA kernels (plugins/cuda.cmake) and the CUDA runtime/headers for the host code
  if(NOT TARGET defmamba_cuda_kernels)
    list(APPEND _dm_trt_missing "the CUDA kernels are not built (no target defmamba_cuda_kernels from plugins/cuda.cmake)")
  else()
    if(NOT TARGET CUDA::cudart_static)
      find_package(CUDAToolkit QUIET)
    endif()
    if(NOT TARGET CUDA::cudart_static)
      list(APPEND _dm_trt_missing "CUDA toolkit (CUDA::cudart_static) not found")
    endif()
  endif()
endif()

# ---- decide -----------------------------------------------------------------------------------------------
if(_dm_trt_mode STREQUAL "OFF")
  message(STATUS "defmamba: TensorRT plugins skipped (DEFMAMBA_BUILD_TRT=OFF)")
elseif(_dm_trt_missing)
  list(JOIN _dm_trt_missing "; " _dm_trt_why)
  if(_dm_trt_mode STREQUAL "ON")
    message(FATAL_ERROR "defmamba: DEFMAMBA_BUILD_TRT=ON but ${_dm_trt_why}")
  endif()
  message(STATUS "defmamba: TensorRT plugins skipped (DEFMAMBA_BUILD_TRT=AUTO): ${_dm_trt_why}")
else()
  set(DEFMAMBA_TRT_BUILT ON)
endif()

# ---- the library ------------------------------------------------------------------------------------------
if(DEFMAMBA_TRT_BUILT)
  set(DEFMAMBA_TRT_INCLUDE_DIRS "${_dm_trt_inc}" ${CUDAToolkit_INCLUDE_DIRS})
  add_library(defmamba_trt_plugins SHARED register_trt.cpp common/trt_utils.h common/trt_plugin_base.h)
  target_include_directories(defmamba_trt_plugins PRIVATE ${CMAKE_CURRENT_SOURCE_DIR} ${CMAKE_CURRENT_SOURCE_DIR}/common)
  target_include_directories(defmamba_trt_plugins SYSTEM PRIVATE ${DEFMAMBA_TRT_INCLUDE_DIRS})
  target_compile_options(defmamba_trt_plugins PRIVATE ${DEFMAMBA_CXX_FLAGS})
  target_compile_definitions(defmamba_trt_plugins PRIVATE ${DEFMAMBA_CXX_DEFINITIONS})
  target_link_libraries(defmamba_trt_plugins PRIVATE defmamba_cuda_kernels CUDA::cudart_static ${CMAKE_DL_LIBS})
  if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
    # Export only the two entry points; keep the static CUDA runtime's symbols private (no interposition
    # with another libcudart in the process), and require every symbol to resolve without libnvinfer.
    set(_dm_trt_map "${CMAKE_CURRENT_BINARY_DIR}/defmamba_trt_plugins.map")
    file(WRITE "${_dm_trt_map}" "{\n  global:\n    getCreators;\n    setLoggerFinder;\n  local:\n    *;\n};\n")
    target_link_options(defmamba_trt_plugins PRIVATE
      -Wl,--no-undefined -Wl,--exclude-libs,ALL "-Wl,--version-script=${_dm_trt_map}")
    set_property(TARGET defmamba_trt_plugins APPEND PROPERTY LINK_DEPENDS "${_dm_trt_map}")
  endif()

  message(STATUS "defmamba: TensorRT plugins ON: TensorRT ${_dm_trt_version} headers ${_dm_trt_inc} "
                 "(libdefmamba_trt_plugins.so, not linked against libnvinfer)")
endif()
