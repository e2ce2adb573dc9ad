// TokenSort ORT op: shape/dtype validation, output allocation, CPU kernel call.
#include "ort_op.h"

#include <limits>

#include "cpu_kernel.h"

namespace defmamba {
namespace ort {

template <typename T>
TokenSortOp<T>::TokenSortOp()
    : CpuOp<TokenSortOp<T>, TokenSortKernel<T>>({ElemType<T>::value},
                                                {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64}) {}

template <typename T>
void TokenSortKernel<T>::Compute(Ort::KernelContext& ctx) {
  const char* op = kName;
  const Input in = get_input(ctx, 0, op, "token_offset");
  expect_type(op, in, ElemType<T>::value);
  expect_shape(op, in, any_dims(2), "(Bt, L)");
  const int64_t Bt = in.shape[0], L = in.shape[1];
  if (L > std::numeric_limits<int32_t>::max())
    fail(op, "input 'token_offset' has L = " + std::to_string(L) + ", more than 2^31-1 tokens are not supported");
  Ort::UnownedValue perm = ctx.GetOutput(0, in.shape);
  Ort::UnownedValue inv = ctx.GetOutput(1, in.shape);
  if (Bt == 0 || L == 0) return;
  token_sort_cpu<T>(Bt, L, in.as<T>(), perm.GetTensorMutableData<int64_t>(), inv.GetTensorMutableData<int64_t>(),
                    make_parallel(ctx));
}

template struct TokenSortKernel<float>;
template struct TokenSortKernel<Half>;
template struct TokenSortKernel<double>;
template struct TokenSortOp<float>;
template struct TokenSortOp<Half>;
template struct TokenSortOp<double>;

}  // namespace ort
}  // namespace defmamba
