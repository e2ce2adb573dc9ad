// TokenSort as an ONNX Runtime custom op (domain "defmamba", CPU execution provider).
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

template <typename T>
struct TokenSortKernel : CpuKernel<TokenSortKernel<T>> {
  static constexpr const char* kName = "TokenSort";
  TokenSortKernel(const OrtApi&, const OrtKernelInfo*) {}
  void Compute(Ort::KernelContext& ctx);
};

// Input: token_offset (T = float, Half or double); outputs: perm, inv_perm (int64).
template <typename T>
struct TokenSortOp : CpuOp<TokenSortOp<T>, TokenSortKernel<T>> {
  static constexpr const char* kName = "TokenSort";
  TokenSortOp();
  static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) { return infer_copy_shape(ctx, 0, 2, {0, 1}); }
};

extern template struct TokenSortOp<float>;
extern template struct TokenSortOp<Half>;
extern template struct TokenSortOp<double>;

}  // namespace ort
}  // namespace defmamba
