// DeformGather CUDA-EP op: validation shared with the CPU op, output allocation, kernel launch on the
// compute stream that ONNX Runtime hands over (no synchronisation, no host copies).
#include "ort_cuda_op.h"

#include "deform_gather/kernel.h"
#include "ort_cuda_utils.h"

namespace defmamba {
namespace ort {

template <typename T>
DeformGatherCudaOp<T>::DeformGatherCudaOp()
    : CudaOp<DeformGatherCudaOp<T>, DeformGatherCudaKernel<T>>(
          {ElemType<T>::value, ElemType<T>::value, ElemType<T>::value}, {ElemType<T>::value}) {}

template <typename T>
void DeformGatherCudaKernel<T>::Compute(Ort::KernelContext& ctx) {
  const DeformGatherArgs a = read_deform_gather_args(ctx, ElemType<T>::value);
  Ort::UnownedValue feat = ctx.GetOutput(0, a.x.shape);
  if (a.batch == 0 || a.channels == 0) return;
  using D = typename DeviceType<T>::type;
  check_launch(kName, launchDeformGather<D>(static_cast<const D*>(a.x.data), static_cast<const D*>(a.offset.data),
                                            static_cast<const D*>(a.table.data),
                                            static_cast<D*>(feat.GetTensorMutableRawData()), a.batch, a.channels,
                                            a.height, a.width, a.offset_channels, a.table_h, a.table_w,
                                            compute_stream(ctx)));
}

template struct DeformGatherCudaKernel<float>;
template struct DeformGatherCudaKernel<Half>;
template struct DeformGatherCudaOp<float>;
template struct DeformGatherCudaOp<Half>;

}  // namespace ort
}  // namespace defmamba
