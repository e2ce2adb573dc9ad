// DeformGather as an ONNX Runtime custom op (domain "defmamba", CPU execution provider).
#pragma once

#include "ort_utils.h"

namespace defmamba {
namespace ort {

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
