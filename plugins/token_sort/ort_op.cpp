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

TokenSortArgs read_token_sort_args(const Ort::KernelContext& ctx, ONNXTensorElementDataType io_type) {
  const char* op = "TokenSort";
  TokenSortArgs a{get_input(ctx, 0, op, "token_offset"), 0, 0};
  expect_type(op, a.token_offset, io_type);
  expect_shape(op, a.token_offset, any_dims(2), "(Bt, L)");
  a.batch = a.token_offset.shape[0];
  a.length = a.token_offset.shape[1];
  if (a.length > std::numeric_limits<int32_t>::max())
    fail(op, "input 'token_offset' has L = " + std::to_string(a.length) +
                 ", more than 2^31-1 tokens are not supported");
  return a;
}

template <typename T>
void TokenSortKernel<T>::Compute(Ort::KernelContext& ctx) {
  const TokenSortArgs a = read_token_sort_args(ctx, ElemType<T>::value);
  Ort::UnownedValue perm = ctx.GetOutput(0, a.token_offset.shape);
  Ort::UnownedValue inv = ctx.GetOutput(1, a.token_offset.shape);
  if (a.batch == 0 || a.length == 0) return;
  const OrtScratch scratch(ctx);
  token_sort_cpu<T>(a.batch, a.length, a.token_offset.as<T>(), perm.GetTensorMutableData<int64_t>(),
                    inv.GetTensorMutableData<int64_t>(), make_parallel(ctx), scratch.get());
}

template struct TokenSortKernel<float>;
template struct TokenSortKernel<Half>;
template struct TokenSortKernel<double>;
template struct TokenSortOp<float>;
template struct TokenSortOp<Half>;
template struct TokenSortOp<double>;

}  // namespace ort
}  // namespace defmamba
