// TokenSort as an ONNX Runtime custom op (domain "defmamba"): what the CPU op (ort_op.cpp) and the
// CUDA-EP op (ort_cuda_op.cpp) share, and the functions that register them (register_ort.cpp).
#pragma once

#include "ort_utils.h"

namespace defmamba {
namespace ort {

// The validated input of a TokenSort node (shared by the CPU op and the CUDA-EP op in
// ort_cuda_op.cpp). Throws (message "TokenSort: ...") on a wrong dtype or shape.
struct TokenSortArgs {
  Input token_offset;
  int64_t batch, length;
};
TokenSortArgs read_token_sort_args(const Ort::KernelContext& ctx, ONNXTensorElementDataType io_type);

// The node as both kernels see it: input token_offset (T), outputs perm, inv_perm (int64); no
// attributes.
template <typename T>
struct TokenSortNode {
  static constexpr const char* kName = "TokenSort";
  static std::vector<ONNXTensorElementDataType> input_types() { return {ElemType<T>::value}; }
  static std::vector<ONNXTensorElementDataType> output_types() {
    return {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64};
  }
  static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) { return infer_copy_shape(ctx, 0, 2, {0, 1}); }

  TokenSortNode(const OrtApi&, const OrtKernelInfo*) {}
};

// The ops for the CPU execution provider (float32, float16, float64) and, in CUDA builds, for the
// CUDA one (float32, float16: float64 stays on the CPU op).
void add_token_sort_ops(Ort::CustomOpDomain& domain);
void add_token_sort_cuda_ops(Ort::CustomOpDomain& domain);

}  // namespace ort
}  // namespace defmamba
