// TokenSort as an ONNX Runtime custom op for the CUDA execution provider (domain "defmamba").
// Same input, validation and messages as the CPU op (ort_op.h); the kernel is launchTokenSort
// (kernel.h, Index = int64_t) on ORT's compute stream, with its workspace from ORT's allocator for
// the input's device. float32 and float16 input (float64 stays on the CPU op). Built only with
// DEFMAMBA_WITH_CUDA.
#pragma once

#include "ort_cuda_utils.h"
#include "ort_op.h"

namespace defmamba {
namespace ort {

template <typename T>
struct TokenSortCudaKernel : CpuKernel<TokenSortCudaKernel<T>> {
  static constexpr const char* kName = "TokenSort";
  TokenSortCudaKernel(const OrtApi&, const OrtKernelInfo*) {}
  void Compute(Ort::KernelContext& ctx);
};

// Input token_offset and outputs perm, inv_perm (int64) in CUDA device memory. T = float or Half.
template <typename T>
struct TokenSortCudaOp : CudaOp<TokenSortCudaOp<T>, TokenSortCudaKernel<T>> {
  static constexpr const char* kName = "TokenSort";
  TokenSortCudaOp();
  static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) { return infer_copy_shape(ctx, 0, 2, {0, 1}); }
};

extern template struct TokenSortCudaOp<float>;
extern template struct TokenSortCudaOp<Half>;

}  // namespace ort
}  // namespace defmamba
