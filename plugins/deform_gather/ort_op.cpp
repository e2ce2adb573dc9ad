// DeformGather ORT op: shape/dtype validation, output allocation, CPU kernel call.
#include "ort_op.h"

#include <limits>

#include "cpu_kernel.h"

namespace defmamba {
namespace ort {

template <typename T>
DeformGatherOp<T>::DeformGatherOp()
    : CpuOp<DeformGatherOp<T>, DeformGatherKernel<T>>({ElemType<T>::value, ElemType<T>::value, ElemType<T>::value},
                                                      {ElemType<T>::value}) {}

template <typename T>
void DeformGatherKernel<T>::Compute(Ort::KernelContext& ctx) {
  const char* op = kName;
  const Input x = get_input(ctx, 0, op, "x");
  const Input offset = get_input(ctx, 1, op, "offset");
  const Input table = get_input(ctx, 2, op, "rpe_table");
  for (const Input* in : {&x, &offset, &table}) expect_type(op, *in, ElemType<T>::value);

  expect_shape(op, x, any_dims(4), "(Bt, Ch, H, W)");
  const int64_t Bt = x.shape[0], Ch = x.shape[1], H = x.shape[2], W = x.shape[3];
  if (H < 2 || W < 2)
    fail(op, "input 'x' must have H >= 2 and W >= 2 (the reference grid divides by H-1 and W-1), got shape " +
                 dims_str(x.shape));
  if (H * W > std::numeric_limits<int32_t>::max())
    fail(op, "input 'x' has H*W = " + std::to_string(H * W) + " pixels, more than 2^31-1 are not supported");
  expect_shape(op, offset, {Bt, -1, H, W}, "(Bt, K, H, W)", "with K >= 2 (Bt, H, W from 'x')");
  const int64_t K = offset.shape[1];
  if (K < 2)
    fail(op, "input 'offset' must have K >= 2 channels (0 = dy, 1 = dx), got shape " + dims_str(offset.shape));
  expect_shape(op, table, {Ch, -1, -1}, "(Ch, Th, Tw)", "(Ch from 'x')");
  const int64_t Th = table.shape[1], Tw = table.shape[2];
  if (Th < 1 || Tw < 1) fail(op, "input 'rpe_table' must not be empty, got shape " + dims_str(table.shape));

  Ort::UnownedValue feat = ctx.GetOutput(0, x.shape);
  if (Bt == 0 || Ch == 0) return;
  const DeformGatherShape s{Bt, Ch, H, W, K, Th, Tw};
  deform_gather_cpu<T>(s, x.as<T>(), offset.as<T>(), table.as<T>(), static_cast<T*>(feat.GetTensorMutableRawData()),
                       make_parallel(ctx));
}

template struct DeformGatherKernel<float>;
template struct DeformGatherKernel<Half>;
template struct DeformGatherOp<float>;
template struct DeformGatherOp<Half>;

}  // namespace ort
}  // namespace defmamba
