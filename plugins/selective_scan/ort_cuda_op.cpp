// SelectiveScan CUDA-EP op: validation shared with the CPU op, output allocation, kernel launch on the
// compute stream that ONNX Runtime hands over (no synchronisation, no host copies).
#include <string>

#include "ort_cuda_utils.h"
#include "selective_scan/kernel.h"
#include "selective_scan/ort_op.h"

namespace defmamba {
namespace ort {

namespace {

// Inputs and outputs in CUDA device memory; same validation and messages as the CPU op. The kernel
// supports N <= 1024 states.
template <typename T>
struct SelectiveScanCudaKernel : SelectiveScanNode<T>, KernelBase<SelectiveScanCudaKernel<T>> {
  using SelectiveScanNode<T>::SelectiveScanNode;

  void Compute(Ort::KernelContext& ctx) {
    const char* op = this->kName;
    const SelectiveScanArgs a = read_selective_scan_args(ctx, ElemType<T>::value);
    if (a.state > 1024)
      fail(op, "the CUDA kernel supports N <= 1024 states (dim 2 of 'B'), got N = " + std::to_string(a.state));
    Ort::UnownedValue y = ctx.GetOutput(0, a.u.shape);
    if (a.batch == 0 || a.channels == 0 || a.length == 0) return;
    const uint64_t reverse = reverse_mask(this->reverse_, a.groups);  // throws unless one flag per group (or none)
    using D = typename DeviceType<T>::type;
    check_launch(op, launchSelectiveScan<D>(
                         static_cast<const D*>(a.u.data), static_cast<const D*>(a.delta.data), a.A.as<float>(),
                         static_cast<const D*>(a.B.data), static_cast<const D*>(a.C.data), a.D.as<float>(),
                         a.delta_bias.as<float>(), static_cast<D*>(y.GetTensorMutableRawData()), a.batch, a.channels,
                         a.groups, a.state, a.length, this->delta_softplus_, compute_stream(ctx), reverse));
  }
};

}  // namespace

void add_selective_scan_cuda_ops(Ort::CustomOpDomain& domain) {
  add_ops<Op<SelectiveScanCudaKernel<float>, Ep::kCuda>, Op<SelectiveScanCudaKernel<Half>, Ep::kCuda>>(domain);
}

}  // namespace ort
}  // namespace defmamba
