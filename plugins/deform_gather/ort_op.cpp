// DeformGather ORT op: shape/dtype validation (shared with the CUDA-EP op), output allocation, CPU
// kernel call.
#include "ort_op.h"

#include <limits>

#include "cpu_kernel.h"

namespace defmamba {
namespace ort {

DeformGatherArgs read_deform_gather_args(const Ort::KernelContext& ctx, ONNXTensorElementDataType io_type) {
  const char* op = "DeformGather";
  DeformGatherArgs a{get_input(ctx, 0, op, "x"), get_input(ctx, 1, op, "offset"), get_input(ctx, 2, op, "rpe_table"),
                     0, 0, 0, 0, 0, 0, 0};
  for (const Input* in : {&a.x, &a.offset, &a.table}) expect_type(op, *in, io_type);

  expect_shape(op, a.x, any_dims(4), "(Bt, Ch, H, W)");
  const int64_t Bt = a.x.shape[0], Ch = a.x.shape[1], H = a.x.shape[2], W = a.x.shape[3];
  if (H < 2 || W < 2)
    fail(op, "input 'x' must have H >= 2 and W >= 2 (the reference grid divides by H-1 and W-1), got shape " +
                 dims_str(a.x.shape));
  if (H * W > std::numeric_limits<int32_t>::max())
    fail(op, "input 'x' has H*W = " + std::to_string(H * W) + " pixels, more than 2^31-1 are not supported");
  expect_shape(op, a.offset, {Bt, -1, H, W}, "(Bt, K, H, W)", "with K >= 2 (Bt, H, W from 'x')");
  const int64_t K = a.offset.shape[1];
  if (K < 2)
    fail(op, "input 'offset' must have K >= 2 channels (0 = dy, 1 = dx), got shape " + dims_str(a.offset.shape));
  expect_shape(op, a.table, {Ch, -1, -1}, "(Ch, Th, Tw)", "(Ch from 'x')");
  const int64_t Th = a.table.shape[1], Tw = a.table.shape[2];
  if (Th < 1 || Tw < 1) fail(op, "input 'rpe_table' must not be empty, got shape " + dims_str(a.table.shape));
  a.batch = Bt;
  a.channels = Ch;
  a.height = H;
  a.width = W;
  a.offset_channels = K;
  a.table_h = Th;
  a.table_w = Tw;
  return a;
}

namespace {

template <typename T>
struct DeformGatherKernel : DeformGatherNode<T>, KernelBase<DeformGatherKernel<T>> {
  using DeformGatherNode<T>::DeformGatherNode;

  void Compute(Ort::KernelContext& ctx) {
    const DeformGatherArgs a = read_deform_gather_args(ctx, ElemType<T>::value);
    Ort::UnownedValue feat = ctx.GetOutput(0, a.x.shape);
    if (a.batch == 0 || a.channels == 0) return;
    const DeformGatherShape s{a.batch, a.channels, a.height, a.width, a.offset_channels, a.table_h, a.table_w};
    const OrtScratch scratch(ctx);
    deform_gather_cpu<T>(s, a.x.as<T>(), a.offset.as<T>(), a.table.as<T>(),
                         static_cast<T*>(feat.GetTensorMutableRawData()), make_parallel(ctx), scratch.get());
  }
};

}  // namespace

void add_deform_gather_ops(Ort::CustomOpDomain& domain) {
  add_ops<Op<DeformGatherKernel<float>>, Op<DeformGatherKernel<Half>>>(domain);
}

}  // namespace ort
}  // namespace defmamba
