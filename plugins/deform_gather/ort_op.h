// DeformGather as an ONNX Runtime custom op (domain "defmamba"): what the CPU op (ort_op.cpp) and the
// CUDA-EP op (ort_cuda_op.cpp) share, and the functions that register them (register_ort.cpp).
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

// The node as both kernels see it, T = float or Half: inputs x, offset, rpe_table, output feat (all T);
// no attributes.
template <typename T>
struct DeformGatherNode {
  static constexpr const char* kName = "DeformGather";
  static std::vector<ONNXTensorElementDataType> input_types() {
    return {ElemType<T>::value, ElemType<T>::value, ElemType<T>::value};
  }
  static std::vector<ONNXTensorElementDataType> output_types() { return {ElemType<T>::value}; }
  static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) { return infer_copy_shape(ctx, 0, 4, {0}); }

  DeformGatherNode(const OrtApi&, const OrtKernelInfo*) {}
};

// The ops for the CPU execution provider (float32, float16) and, in CUDA builds, for the CUDA one.
void add_deform_gather_ops(Ort::CustomOpDomain& domain);
void add_deform_gather_cuda_ops(Ort::CustomOpDomain& domain);

}  // namespace ort
}  // namespace defmamba
