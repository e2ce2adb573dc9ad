// SelectiveScan CUDA-EP op: validation shared with the CPU op, output allocation, kernel launch on the
// compute stream that ONNX Runtime hands over (no synchronisation, no host copies).
#include "ort_cuda_op.h"

#include <string>

#include "ort_cuda_utils.h"
#include "selective_scan/kernel.h"

namespace defmamba {
namespace ort {

template <typename T>
SelectiveScanCudaOp<T>::SelectiveScanCudaOp()
    : CudaOp<SelectiveScanCudaOp<T>, SelectiveScanCudaKernel<T>>(
          {ElemType<T>::value, ElemType<T>::value, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ElemType<T>::value,
           ElemType<T>::value, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT},
          {ElemType<T>::value}) {}

template <typename T>
SelectiveScanCudaKernel<T>::SelectiveScanCudaKernel(const OrtApi& api, const OrtKernelInfo* info)
    : delta_softplus_(read_delta_softplus(api, info)), reverse_(read_reverse(api, info)) {}

template <typename T>
void SelectiveScanCudaKernel<T>::Compute(Ort::KernelContext& ctx) {
  const char* op = kName;
  const SelectiveScanArgs a = read_selective_scan_args(ctx, ElemType<T>::value);
  if (a.state > 1024)
    fail(op, "the CUDA kernel supports N <= 1024 states (dim 2 of 'B'), got N = " + std::to_string(a.state));
  Ort::UnownedValue y = ctx.GetOutput(0, a.u.shape);
  if (a.batch == 0 || a.channels == 0 || a.length == 0) return;
  const uint64_t reverse = reverse_mask(reverse_, a.groups);  // throws unless one flag per group (or none)
  using D = typename DeviceType<T>::type;
  check_launch(op, launchSelectiveScan<D>(
                       static_cast<const D*>(a.u.data), static_cast<const D*>(a.delta.data), a.A.as<float>(),
                       static_cast<const D*>(a.B.data), static_cast<const D*>(a.C.data), a.D.as<float>(),
                       a.delta_bias.as<float>(), static_cast<D*>(y.GetTensorMutableRawData()), a.batch, a.channels,
                       a.groups, a.state, a.length, delta_softplus_, compute_stream(ctx), reverse));
}

template struct SelectiveScanCudaKernel<float>;
template struct SelectiveScanCudaKernel<Half>;
template struct SelectiveScanCudaOp<float>;
template struct SelectiveScanCudaOp<Half>;

}  // namespace ort
}  // namespace defmamba
