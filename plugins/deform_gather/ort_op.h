// DeformGather as an ONNX Runtime custom op (domain "defmamba", CPU execution provider).
#pragma once

#include "ort_utils.h"

namespace defmamba {
namespace ort {

// The validated inputs of a DeformGather node (shared by the CPU op and the CUDA-EP op in
// ort_cuda_op.cpp). Throws (message "DeformGather: ...") on a wrong dtype or shape.
struct DeformGatherArgs {
  Input x, offset, table;
  int64_t batch, channels, height, width, offset_channels, table_h, table_w;
};
DeformGatherArgs read_deform_gather_args(const Ort::KernelContext& ctx, ONNXTensorElementDataType io_type);

template <typename T>
struct DeformGatherKernel : CpuKernel<DeformGatherKernel<T>> {
  static constexpr const char* kName = "DeformGather";
  DeformGatherKernel(const OrtApi&, const OrtKernelInfo*) {}
  void Compute(Ort::KernelContext& ctx);
};

// Inputs: x, offset, rpe_table (all T); output: feat (T). Registered once per T (float, Half).
template <typename T>
struct DeformGatherOp : CpuOp<DeformGatherOp<T>, DeformGatherKernel<T>> {
  static constexpr const char* kName = "DeformGather";
  DeformGatherOp();
  static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) { return infer_copy_shape(ctx, 0, 4, {0}); }
};

extern template struct DeformGatherOp<float>;
extern template struct DeformGatherOp<Half>;

}  // namespace ort
}  // namespace defmamba
