// SelectiveScan as an ONNX Runtime custom op (domain "defmamba"): what the CPU op (ort_op.cpp) and the
// CUDA-EP op (ort_cuda_op.cpp) share, and the functions that register them (register_ort.cpp).
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

// The node as both kernels see it, T = float or Half: inputs u, delta, A, B, C, D, delta_bias (A, D
// and delta_bias always float32), output y; the attributes, read and checked at session creation.
template <typename T>
struct SelectiveScanNode {
  static constexpr const char* kName = "SelectiveScan";
  static std::vector<ONNXTensorElementDataType> input_types() {
    return {ElemType<T>::value, ElemType<T>::value, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ElemType<T>::value,
            ElemType<T>::value, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};
  }
  static std::vector<ONNXTensorElementDataType> output_types() { return {ElemType<T>::value}; }
  static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) { return infer_copy_shape(ctx, 0, 3, {0}); }

  SelectiveScanNode(const OrtApi& api, const OrtKernelInfo* info)
      : delta_softplus_(read_delta_softplus(api, info)), reverse_(read_reverse(api, info)) {}

 protected:
  bool delta_softplus_ = true;
  std::vector<int64_t> reverse_;  // the `reverse` attribute (read_reverse); empty: every group forward
};

// The ops for the CPU execution provider (float32, float16) and, in CUDA builds, for the CUDA one.
void add_selective_scan_ops(Ort::CustomOpDomain& domain);
void add_selective_scan_cuda_ops(Ort::CustomOpDomain& domain);

}  // namespace ort
}  // namespace defmamba
