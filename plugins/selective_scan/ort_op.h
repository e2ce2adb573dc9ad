// SelectiveScan as an ONNX Runtime custom op (domain "defmamba", CPU execution provider).
#pragma once

#include "ort_utils.h"

namespace defmamba {
namespace ort {

// The validated inputs of a SelectiveScan node (shared by the CPU op and the CUDA-EP op in
// ort_cuda_op.cpp). Throws (message "SelectiveScan: ...") on a wrong dtype or shape.
struct SelectiveScanArgs {
  Input u, delta, A, B, C, D, delta_bias;
  int64_t batch, channels, groups, state, length;  // Bt, Ch, G, N, L
};
SelectiveScanArgs read_selective_scan_args(const Ort::KernelContext& ctx, ONNXTensorElementDataType io_type);

// The delta_softplus attribute (0 or 1, default 1); throws on another value or type.
bool read_delta_softplus(const OrtApi& api, const OrtKernelInfo* info);

// The optional `reverse` attribute (ints, one 0/1 flag per group; absent or empty: no group reversed).
// Throws on a value other than 0/1 or a 1 at index >= 64 (groups that can be reversed: 0..63).
std::vector<int64_t> read_reverse(const OrtApi& api, const OrtKernelInfo* info);

// The flags as a bit mask (bit g: group g scans backwards) for a node whose inputs have G groups;
// throws when a non-empty list does not have exactly G entries.
uint64_t reverse_mask(const std::vector<int64_t>& reverse, int64_t groups);

// Kernel for I/O type T (float or Half); A, D and delta_bias are always float32.
template <typename T>
struct SelectiveScanKernel : CpuKernel<SelectiveScanKernel<T>> {
  static constexpr const char* kName = "SelectiveScan";
  SelectiveScanKernel(const OrtApi& api, const OrtKernelInfo* info);
  void Compute(Ort::KernelContext& ctx);

 private:
  bool delta_softplus_ = true;
  std::vector<int64_t> reverse_;
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
