// DeformGather as an ONNX Runtime custom op for the CUDA execution provider (domain "defmamba").
// Same inputs, validation and messages as the CPU op (ort_op.h); the kernel is launchDeformGather
// (kernel.h) on ORT's compute stream. Built only with DEFMAMBA_WITH_CUDA.
#pragma once

#include "ort_cuda_utils.h"
#include "ort_op.h"

namespace defmamba {
namespace ort {

template <typename T>
struct DeformGatherCudaKernel : CpuKernel<DeformGatherCudaKernel<T>> {
  static constexpr const char* kName = "DeformGather";
  DeformGatherCudaKernel(const OrtApi&, const OrtKernelInfo*) {}
  void Compute(Ort::KernelContext& ctx);
};

// Inputs x, offset, rpe_table and output feat in CUDA device memory. T = float or Half.
template <typename T>
struct DeformGatherCudaOp : CudaOp<DeformGatherCudaOp<T>, DeformGatherCudaKernel<T>> {
  static constexpr const char* kName = "DeformGather";
  DeformGatherCudaOp();
  static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) { return infer_copy_shape(ctx, 0, 4, {0}); }
};

extern template struct DeformGatherCudaOp<float>;
extern template struct DeformGatherCudaOp<Half>;

}  // namespace ort
}  // namespace defmamba
