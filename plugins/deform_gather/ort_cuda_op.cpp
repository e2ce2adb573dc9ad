// DeformGather CUDA-EP op: validation shared with the CPU op, output allocation, kernel launch on the
// compute stream that ONNX Runtime hands over (no synchronisation, no host copies).
#include "ort_cuda_op.h"

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <string>

#include "deform_gather/kernel.h"

namespace defmamba {
namespace ort {
namespace {

template <typename T>
struct DeviceType {
  using type = float;
};
template <>
struct DeviceType<Half> {
  using type = __half;
};
static_assert(sizeof(Half) == sizeof(__half), "Half and __half must share a layout");

}  // namespace

template <typename T>
DeformGatherCudaOp<T>::DeformGatherCudaOp()
    : CpuOp<DeformGatherCudaOp<T>, DeformGatherCudaKernel<T>>(
          {ElemType<T>::value, ElemType<T>::value, ElemType<T>::value}, {ElemType<T>::value}) {}

template <typename T>
void DeformGatherCudaKernel<T>::Compute(Ort::KernelContext& ctx) {
  const char* op = kName;
  const DeformGatherArgs a = read_deform_gather_args(ctx, ElemType<T>::value);
  Ort::UnownedValue feat = ctx.GetOutput(0, a.x.shape);
  if (a.batch == 0 || a.channels == 0) return;
  using D = typename DeviceType<T>::type;
  const cudaStream_t stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
  const cudaError_t err = launchDeformGather<D>(
      static_cast<const D*>(a.x.data), static_cast<const D*>(a.offset.data), static_cast<const D*>(a.table.data),
      static_cast<D*>(feat.GetTensorMutableRawData()), a.batch, a.channels, a.height, a.width, a.offset_channels,
      a.table_h, a.table_w, stream);
  if (err != cudaSuccess)
    throw Ort::Exception(std::string(op) + ": CUDA kernel launch failed: " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")",
                         ORT_RUNTIME_EXCEPTION);
}

template struct DeformGatherCudaKernel<float>;
template struct DeformGatherCudaKernel<Half>;
template struct DeformGatherCudaOp<float>;
template struct DeformGatherCudaOp<Half>;

}  // namespace ort
}  // namespace defmamba
