// SelectiveScan as an ONNX Runtime custom op (domain "defmamba", CPU execution provider).
#pragma once

#include "ort_utils.h"

namespace defmamba {
namespace ort {

// Kernel for I/O type T (float or Half); A, D and delta_bias are always float32.
template <typename T>
struct SelectiveScanKernel : CpuKernel<SelectiveScanKernel<T>> {
  static constexpr const char* kName = "SelectiveScan";
  SelectiveScanKernel(const OrtApi& api, const OrtKernelInfo* info);
  void Compute(Ort::KernelContext& ctx);

 private:
  bool delta_softplus_ = true;
};

// Inputs: u, delta, A, B, C, D, delta_bias; output: y. Registered once per T.
template <typename T>
struct SelectiveScanOp : CpuOp<SelectiveScanOp<T>, SelectiveScanKernel<T>> {
  static constexpr const char* kName = "SelectiveScan";
  SelectiveScanOp();
  static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) { return infer_copy_shape(ctx, 0, 3, {0}); }
};

extern template struct SelectiveScanOp<float>;
extern template struct SelectiveScanOp<Half>;

}  // namespace ort
}  // namespace defmamba
