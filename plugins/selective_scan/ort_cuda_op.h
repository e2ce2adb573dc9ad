// SelectiveScan as an ONNX Runtime custom op for the CUDA execution provider (domain "defmamba").
// Same inputs, attributes, validation and messages as the CPU op (ort_op.h); the kernel is
// launchSelectiveScan (kernel.h) on ORT's compute stream. Built only with DEFMAMBA_WITH_CUDA.
#pragma once

#include "ort_cuda_utils.h"
#include "ort_op.h"

namespace defmamba {
namespace ort {

template <typename T>
struct SelectiveScanCudaKernel : CpuKernel<SelectiveScanCudaKernel<T>> {
  static constexpr const char* kName = "SelectiveScan";
  SelectiveScanCudaKernel(const OrtApi& api, const OrtKernelInfo* info);
  void Compute(Ort::KernelContext& ctx);

 private:
  bool delta_softplus_ = true;
  std::vector<int64_t> reverse_;  // the `reverse` attribute (read_reverse); empty: every group forward
};

// Inputs and outputs in CUDA device memory (OrtMemTypeDefault of the CUDA EP). T = float or Half.
template <typename T>
struct SelectiveScanCudaOp : CudaOp<SelectiveScanCudaOp<T>, SelectiveScanCudaKernel<T>> {
  static constexpr const char* kName = "SelectiveScan";
  SelectiveScanCudaOp();
  static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) { return infer_copy_shape(ctx, 0, 3, {0}); }
};

extern template struct SelectiveScanCudaOp<float>;
extern template struct SelectiveScanCudaOp<Half>;

}  // namespace ort
}  // namespace defmamba
