// DeformGather CUDA-EP op: validation shared with the CPU op, output allocation, kernel launch on the
// compute stream that ONNX Runtime hands over (no synchronisation, no host copies).
#include "deform_gather/kernel.h"
#include "deform_gather/ort_op.h"
#include "ort_cuda_utils.h"

namespace defmamba {
namespace ort {

namespace {

// Inputs x, offset, rpe_table and output feat in CUDA device memory.
template <typename T>
struct DeformGatherCudaKernel : DeformGatherNode<T>, KernelBase<DeformGatherCudaKernel<T>> {
  using DeformGatherNode<T>::DeformGatherNode;

  void Compute(Ort::KernelContext& ctx) {
    const DeformGatherArgs a = read_deform_gather_args(ctx, ElemType<T>::value);
    Ort::UnownedValue feat = ctx.GetOutput(0, a.x.shape);
    if (a.batch == 0 || a.channels == 0) return;
    using D = typename DeviceType<T>::type;
    check_launch(this->kName,
                 launchDeformGather<D>(static_cast<const D*>(a.x.data), static_cast<const D*>(a.offset.data),
                                       static_cast<const D*>(a.table.data),
                                       static_cast<D*>(feat.GetTensorMutableRawData()), a.batch, a.channels,
                                       a.height, a.width, a.offset_channels, a.table_h, a.table_w,
                                       compute_stream(ctx)));
  }
};

}  // namespace

void add_deform_gather_cuda_ops(Ort::CustomOpDomain& domain) {
  add_ops<Op<DeformGatherCudaKernel<float>, Ep::kCuda>, Op<DeformGatherCudaKernel<Half>, Ep::kCuda>>(domain);
}

}  // namespace ort
}  // namespace defmamba
