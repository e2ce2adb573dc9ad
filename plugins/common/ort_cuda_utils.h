// Helpers shared by the ONNX Runtime CUDA execution-provider ops (plugins/<op>/ort_cuda_op.cpp, registered
// as Op<Kernel, Ep::kCuda> from ort_utils.h): the device element type, the compute stream and CUDA
// error reporting.
// Built only with DEFMAMBA_WITH_CUDA (plugins/cuda.cmake). Not for kernel headers.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <string>

#include "ort_utils.h"

namespace defmamba {
namespace ort {

// The kernels' element type for an op's T: float -> float, Half -> __half.
template <typename T>
struct DeviceType {
  using type = float;
};
template <>
struct DeviceType<Half> {
  using type = __half;
};
static_assert(sizeof(Half) == sizeof(__half), "Half and __half must share a layout");

// The stream ONNX Runtime runs the node on (launches go there: no synchronisation, no host copies).
inline cudaStream_t compute_stream(const Ort::KernelContext& ctx) {
  return static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
}

// "<Op>: <what>: <cudaErrorName> (<cudaErrorString>)" as ORT_RUNTIME_EXCEPTION.
[[noreturn]] inline void cuda_fail(const char* op, const char* what, cudaError_t err) {
  throw Ort::Exception(std::string(op) + ": " + what + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                           ")",
                       ORT_RUNTIME_EXCEPTION);
}

inline void check_launch(const char* op, cudaError_t err) {
  if (err != cudaSuccess) cuda_fail(op, "CUDA kernel launch failed", err);
}

}  // namespace ort
}  // namespace defmamba
